"""Training checkpoints: written atomically, tensors and plain containers only, checked on resume.

A run folder holds ``checkpoints/last.pt`` (rewritten every ``train.checkpoint_every`` steps and on
a requested stop) and ``checkpoints/final.pt`` (at the end). Both load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from drasclr_monailabel.config import to_dict
from drasclr_monailabel.errors import ConfigError, InputError
from drasclr_monailabel.ssl.config import RESUME_SAFE_KEYS
from drasclr_monailabel.utils.atomic import write_with

CHECKPOINT_FORMAT = "drasclr-checkpoint/1"
LAST_NAME = "last.pt"
FINAL_NAME = "final.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (plus the format tag) to ``path``."""
    write_with(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (weights only, on the CPU) and check its format."""
    if not path.is_file():
        raise InputError(path, "not found: nothing to resume or export")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt files raise several exception types
        raise InputError(path, f"cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"is not a {CHECKPOINT_FORMAT} checkpoint")
    return payload


def check_resumable(path: Path, saved_config: dict[str, Any], config: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Refuse to resume with a config that changes what the run computes (keys outside RESUME_SAFE_KEYS).

    A key that a later version added (absent from the saved config) is accepted at its default
    value ``defaults`` (the recipe schema's), which is what the run computed without it.
    """
    change = config_change(saved_config, config, defaults)
    if change is not None:
        raise ConfigError(path, f"{change}; only {', '.join(sorted(RESUME_SAFE_KEYS))} may change on --resume")


def check_reusable(run_dir: Path, config: Any) -> None:
    """Refuse to reuse the finished run ``run_dir`` for ``config`` (a recipe dataclass) when its
    ``config.yaml`` computed something else, by the rule of :func:`check_resumable`: a benchmark
    that finds a run in its work folder must not report it as the run it was asked for."""
    path = Path(run_dir) / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot be read ({type(exc).__name__}), so the run beside it cannot be reused") from None
    change = config_change(saved if isinstance(saved, dict) else {}, to_dict(config), to_dict(type(config)()))
    if change is not None:
        raise ConfigError(path, f"{change}: this finished run is not the one asked for; use another work folder or remove {run_dir}")


def config_change(saved_config: dict[str, Any], config: dict[str, Any], defaults: dict[str, Any]) -> str | None:
    """The first key outside RESUME_SAFE_KEYS whose value differs between two configs, described
    ("'key' was X when this run started and is now Y"), or None when they compute the same."""
    old, new, default = _flatten(saved_config), _flatten(config), _flatten(defaults)
    for key in sorted(set(old) | set(new)):
        if key in RESUME_SAFE_KEYS or old.get(key) == new.get(key):
            continue
        if key not in old and key in default and new.get(key) == default[key]:
            continue
        return f"'{key}' was {old.get(key)!r} when this run started and is now {new.get(key)!r}"
    return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

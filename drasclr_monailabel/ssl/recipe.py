"""Load a pretraining recipe: read its ``method`` key, then validate it against that method's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from drasclr_monailabel.config import load_config, parse_override
from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.packaged import recipe_path
from drasclr_monailabel.ssl.method import get_method

DEFAULT_METHOD = "drasclr"


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, method: str | None = None) -> Any:
    """The method's config dataclass built from defaults, ``path`` (a YAML file or a shipped
    recipe's name such as ``drasclr_demo``) and ``key=value`` overrides.

    The method is the recipe's ``method`` key, else ``method``, else drasclr; a ``method`` that
    contradicts the recipe is refused.
    """
    requested = method
    method = requested or DEFAULT_METHOD
    if path is not None:
        path = recipe_path(path)
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            data = None  # load_config below reports the problem with the file named
        if isinstance(data, dict) and "method" in data:
            if requested is not None and str(data["method"]) != requested:
                raise ConfigError(path, f"the recipe is for method {data['method']!r}, but --method {requested} was given")
            method = str(data["method"])
    for override in overrides or []:
        key, value = parse_override(override)
        if key == "method":
            method = str(value)
    entry = get_method(method, source=str(path) if path else "--set method")
    config = load_config(entry.config_schema, path, overrides)
    if not hasattr(config, "train") or not hasattr(config, "optim"):
        raise ConfigError(str(path), f"method {method!r} config lacks the train/optim sections the trainer needs")
    return config

"""The emphysema app's ``--conf KEY VALUE`` options, parsed and validated in one place.

MONAI Label hands the app a dict of strings (``--conf max_epochs 3`` arrives as ``"3"``). Every
key is checked against :class:`AppConf` and every value against the field's type and range before
any task is built, so a typo or a bad value stops the server at start-up with one line naming it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drasclr_monailabel.config import from_mapping
from drasclr_monailabel.errors import ConfigError

if TYPE_CHECKING:
    from drasclr_monailabel.anatomy.scan_store import ScanStore

logger = logging.getLogger(__name__)

SOURCE = "--conf"
MODELS = ("emphysema", "lung", "emphysema_laa")
"""Models the app can serve: the fine-tuned segmentation model, the lung mask, the LAA-950 pseudo-label."""

DEFAULT_PRETRAINED = Path("work/demo/encoder")
"""Where the README's main command (``drasclr demo --workdir work/demo``) exports its encoder,
relative to the folder the server is started from. ``DRASCLR_PRETRAINED`` overrides it."""

STATE_DIR = ".drasclr"
"""Folder inside a local studies folder that holds the app's state (model, caches, label history)."""

LABELLED_THRESHOLD = "labelled"
"""``emphysema_threshold`` value: chosen on the labelled scans after each training round."""

BACKENDS = ("native", "nnunet")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_NO_ENCODER = ("none", "scratch", "")


@dataclass
class AppConf:
    """Every option of the emphysema app (``--conf KEY VALUE``).

    Attributes:
        models: comma-separated subset of :data:`MODELS` to serve.
        backend: what serves the ``emphysema`` model: ``native`` (the DrasCLR segmentation network,
            fine-tuned in the app) or ``nnunet`` (a trained nnU-Net model folder, infer only:
            nnU-Net trains outside the app on a ``drasclr export-nnunet`` dataset).
        nnunet_model: the nnU-Net model folder for ``backend nnunet``
            (``nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>``).
        network: the ``native`` segmentation network: ``drasclr_unet`` (the U-Net on the DrasCLR
            encoder, from ``pretrained`` or from scratch) or ``segresnet`` (MONAI's SegResNet from
            scratch on the CT alone; ``pretrained`` then serves the embedding strategies only).
            SegResNet scored the higher subtype Dice with 1-2 labelled scans in the label-efficiency
            benchmark (docs/segmentation.md).
        pretrained: exported DrasCLR encoder folder (``encoder.pt`` + ``encoder.json``); ``auto``
            uses :data:`DEFAULT_PRETRAINED` when it exists, ``none`` trains from scratch.
        labels: ``emphysema`` (binary) or ``centrilobular,panlobular,paraseptal`` (label values 1, 2, 3).
        device: ``auto`` (GPU when one is visible), ``cpu``, ``cuda`` or ``cuda:N``.
        max_epochs, steps_per_epoch, batch_size, patch_size, lr, freeze_encoder_epochs,
            encoder_batchnorm: one fine-tuning round (see :class:`~drasclr_monailabel.segmentation.training.FinetuneConfig`,
            whose defaults apply when unset).
        emphysema_threshold: emphysema probability above which the ``emphysema`` model labels a voxel:
            ``labelled`` (default) chooses it after each training round as the threshold that changes
            the fewest voxels of the labelled scans' own labels (:mod:`~drasclr_monailabel.segmentation.threshold`;
            the fine-tuned model over-segments at 0.5, which costs the annotator corrections:
            docs/benchmarks.md), or a number between 0 and 1 (0.5 is the arg-max).
        infer_overlap: overlap of neighbouring 64^3 windows in whole-scan inference (0 to 0.5);
            unset: 0 on a CPU (about 2.5 times fewer windows: a chest CT in under 30 s on two
            cores, docs/benchmarks.md), 0.25 on a GPU (blends window seams away).
        amp: mixed precision in training; ``auto`` turns it on only on a GPU, never on a CPU.
        infer_precision: the network's number format at inference and epistemic scoring:
            ``float32``, ``bfloat16`` (autocast), or ``auto`` (default): bfloat16 where the device
            computes it natively (CPUs with AVX512-BF16 or AMX, recent GPUs), else float32
            (:mod:`~drasclr_monailabel.segmentation.precision`).
        seed: random seed of training, patch sampling and the ``random`` strategy (a rerun proposes the
            same scans in the same order).
        skip_training: serve infer only (no trainer is offered to clients).
        skip_scoring: offer no scoring methods (and so no uncertainty or diversity strategies).
        auto_update_scoring: re-score after each training round and each next-sample request.
        epistemic_samples: MC-dropout passes per scan for the epistemic score (at least 2).
        epistemic_windows: lung windows (64^3 voxels at 1 mm) per scan on which the epistemic score is
            estimated (a whole-scan MC-dropout prediction would take minutes per pass on a CPU).
        epistemic_max_images: score at most this many unlabelled scans per call (0 = all).
        embedding_landmarks: landmarks encoded per scan for the patient embedding (evenly spread;
            0 = all valid ones, about 500: slow on a CPU).
        reserve_seconds: a scan handed out by a strategy is not handed out again for this long
            while other candidates remain (two annotators do not get the same scan).
        model_dir: where the fine-tuned model is published (default: ``<studies>/.drasclr/model``).
        cache_dir: per-scan caches such as embeddings (default: ``<studies>/.drasclr/cache``).
        scan_cache_gb: disk space (GiB) for preprocessed scans (lung mask, registration, 1 mm grid;
            about 100 MB per chest CT) kept in ``<cache_dir>/scans`` so infer, scoring and training
            prepare each scan once (least recently used removed first); 0 turns the store off
            (:mod:`~drasclr_monailabel.anatomy.scan_store`).
        allow_datastore_changes: let clients upload images and delete images or labels (off: those
            requests get HTTP 403; saving labels is always allowed).
        background_nice: scheduling priority (Unix nice, 0-19) of MONAI Label's training, scoring
            and batch-infer subprocesses; 19 (default) lets an annotator's request take the cores
            first, 0 runs background work at the server's priority
            (:mod:`~drasclr_monailabel.tasks.background`).
        server_mode: MONAI Label's own key (set by the server); accepted and passed through.
    """

    models: list[str] = field(default_factory=lambda: list(MODELS))
    backend: str = "native"
    nnunet_model: Path | None = None
    network: str = "drasclr_unet"
    pretrained: str = "auto"
    labels: list[str] = field(default_factory=lambda: ["emphysema"])
    device: str = "auto"
    max_epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    patch_size: int | None = None
    lr: float | None = None
    freeze_encoder_epochs: int | None = None
    encoder_batchnorm: str | None = None
    emphysema_threshold: str = LABELLED_THRESHOLD
    infer_overlap: float | None = None
    amp: str = "auto"
    infer_precision: str = "auto"
    seed: int = 0
    skip_training: bool = False
    skip_scoring: bool = False
    auto_update_scoring: bool = True
    epistemic_samples: int = 4
    epistemic_windows: int = 8
    epistemic_max_images: int = 0
    embedding_landmarks: int = 64
    reserve_seconds: int = 600
    model_dir: Path | None = None
    cache_dir: Path | None = None
    scan_cache_gb: float = 5.0
    allow_datastore_changes: bool = False
    background_nice: int = 19
    server_mode: bool = False


@dataclass(frozen=True)
class ResolvedConf:
    """:class:`AppConf` with defaults that depend on the machine and the studies folder resolved.

    Attributes:
        conf: the validated options as given.
        pretrained: encoder folder to start from, or None (scratch).
        pretrained_reason: one line for the log saying where the encoder came from or why there is none.
        device: concrete torch device name (``cpu`` or ``cuda[:N]``).
        amp: mixed precision on (only ever on a GPU).
        infer_overlap: window overlap of whole-scan inference.
        infer_precision: ``float32`` or ``bfloat16``, the network's format at inference.
        model_dir: folder of the published model.
        cache_dir: folder of per-scan caches.
        state_dir: app state folder holding the label history.
    """

    conf: AppConf
    pretrained: Path | None
    pretrained_reason: str
    device: str
    amp: bool
    infer_overlap: float
    infer_precision: str
    model_dir: Path
    cache_dir: Path
    state_dir: Path

    @property
    def labels(self) -> dict[str, int]:
        """Label name -> value in label maps, as MONAI Label clients expect it."""
        return {name: value for value, name in enumerate(self.conf.labels, start=1)}

    def scan_store(self) -> ScanStore:
        """The preprocessed-scan store shared by infer, scoring, training and embeddings (and their processes)."""
        from drasclr_monailabel.anatomy.scan_store import ScanStore

        return ScanStore(self.cache_dir / "scans", int(self.conf.scan_cache_gb * 2**30))


def parse_app_conf(raw: Mapping[str, Any] | None) -> AppConf:
    """Validate MONAI Label's ``--conf`` dict (values usually strings) into :class:`AppConf`.

    Raises:
        ConfigError: an unknown key, an ill-typed value or a value out of range, named.
    """
    conf = from_mapping(AppConf, dict(raw or {}), SOURCE)
    _check_ranges(conf)
    return conf


def resolve_app_conf(conf: AppConf, app_dir: str | Path, studies: str) -> ResolvedConf:
    """Fill in the machine- and folder-dependent defaults of a validated :class:`AppConf`.

    Raises:
        ConfigError: an explicit encoder path that is missing or incomplete, or a GPU that was asked
            for but is not visible.
    """
    from drasclr_monailabel.segmentation.precision import resolve_precision

    pretrained, reason = _resolve_pretrained(conf.pretrained)
    device = _resolve_device(conf.device)
    amp = device.startswith("cuda") and conf.amp in ("auto", "true")
    local = not studies.startswith(("http://", "https://"))
    state_dir = Path(studies) / STATE_DIR if local else Path(app_dir) / STATE_DIR
    return ResolvedConf(
        conf=conf,
        pretrained=pretrained,
        pretrained_reason=reason,
        device=device,
        amp=amp,
        infer_overlap=conf.infer_overlap if conf.infer_overlap is not None else (0.25 if device.startswith("cuda") else 0.0),
        infer_precision=resolve_precision(conf.infer_precision, device),
        model_dir=Path(conf.model_dir) if conf.model_dir else state_dir / "model",
        cache_dir=Path(conf.cache_dir) if conf.cache_dir else state_dir / "cache",
        state_dir=state_dir,
    )


def connect_hint(port: int, resolved: ResolvedConf) -> str:
    """What to tell the user once the server runs: how to connect 3D Slicer."""
    encoder = f"pretrained encoder {resolved.pretrained}" if resolved.pretrained else "no pretrained encoder (from scratch)"
    return (f"emphysema app ready ({encoder}, device {resolved.device}). Connect 3D Slicer: MONAI Label module, "
            f"server http://127.0.0.1:{port} (or this machine's address), press refresh, then 'Next Sample' "
            "and run 'emphysema_laa' (docs/annotator-guide.md)")


TRAINING_LIMITS = {"max_epochs": 1000, "steps_per_epoch": 10000, "batch_size": 64, "patch_size": 128,
                   "freeze_encoder_epochs": 1000}
"""Largest value of each fine-tuning option: beyond these a round would run for days or exhaust memory."""

TRAINING_KEYS = ("max_epochs", "steps_per_epoch", "batch_size", "patch_size", "lr", "freeze_encoder_epochs", "encoder_batchnorm",
                 "seed")
"""Options passed to fine-tuning; train requests may override them per round."""


def training_overrides(conf: AppConf) -> dict[str, Any]:
    """The fine-tuning options that were set (unset ones keep the trainer's defaults)."""
    return {key: getattr(conf, key) for key in TRAINING_KEYS if getattr(conf, key) is not None}


def check_training_options(options: Mapping[str, Any], source: str = SOURCE) -> None:
    """Let the fine-tuning config validate the values (ranges, patch size), naming the bad one."""
    from drasclr_monailabel.segmentation.training import FinetuneConfig

    lr = options.get("lr")
    if lr is not None and not 0.0 < lr < 1.0:
        raise ConfigError(source, f"'lr' must be between 0 and 1, got {lr}")
    if options.get("seed", 0) < 0:
        raise ConfigError(source, f"'seed' must be at least 0, got {options['seed']}")
    for key, limit in TRAINING_LIMITS.items():
        if options.get(key, 0) > limit:
            raise ConfigError(source, f"'{key}' must be at most {limit}, got {options[key]}")
    try:
        FinetuneConfig(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, str(exc)) from None


def _check_ranges(conf: AppConf) -> None:
    from drasclr_monailabel.segmentation.labels import LabelSet
    from drasclr_monailabel.segmentation.precision import PRECISIONS

    unknown = [m for m in conf.models if m not in MODELS]
    if unknown or not conf.models:
        raise ConfigError(SOURCE, f"'models' must name some of {', '.join(MODELS)}, got {','.join(conf.models) or 'nothing'}")
    _check_backend(conf)
    try:
        LabelSet(tuple(conf.labels))
    except ValueError as exc:
        raise ConfigError(SOURCE, str(exc)) from None
    if not _DEVICE.match(conf.device):
        raise ConfigError(SOURCE, f"'device' must be auto, cpu, cuda or cuda:N, got {conf.device!r}")
    if conf.amp not in ("auto", "true", "false"):
        raise ConfigError(SOURCE, f"'amp' must be auto, true or false, got {conf.amp!r}")
    if conf.infer_precision not in PRECISIONS:
        raise ConfigError(SOURCE, f"'infer_precision' must be one of {', '.join(PRECISIONS)}, got {conf.infer_precision!r}")
    fixed_threshold(conf)
    if conf.infer_overlap is not None and not 0.0 <= conf.infer_overlap <= 0.5:
        raise ConfigError(SOURCE, f"'infer_overlap' must be between 0 and 0.5, got {conf.infer_overlap}")
    if conf.scan_cache_gb < 0:
        raise ConfigError(SOURCE, f"'scan_cache_gb' must be at least 0 (0 turns the scan store off), got {conf.scan_cache_gb}")
    if not 0 <= conf.background_nice <= 19:
        raise ConfigError(SOURCE, f"'background_nice' must be between 0 and 19, got {conf.background_nice}")
    minimum = {"epistemic_samples": 2, "epistemic_windows": 1, "epistemic_max_images": 0, "embedding_landmarks": 0, "reserve_seconds": 0}
    for key, low in minimum.items():
        if getattr(conf, key) < low:
            raise ConfigError(SOURCE, f"'{key}' must be at least {low}, got {getattr(conf, key)}")
    check_training_options(training_overrides(conf))


def fixed_threshold(conf: AppConf) -> float | None:
    """The ``emphysema_threshold`` as a number, None when it is chosen on the labelled scans.

    Raises:
        ConfigError: neither ``labelled`` nor a number strictly between 0 and 1.
    """
    if conf.emphysema_threshold == LABELLED_THRESHOLD:
        return None
    try:
        value = float(conf.emphysema_threshold)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:  # also refuses nan
        raise ConfigError(SOURCE, f"'emphysema_threshold' must be {LABELLED_THRESHOLD} or a number between 0 and 1, "
                                  f"got {conf.emphysema_threshold!r}")
    return value


def _check_backend(conf: AppConf) -> None:
    from drasclr_monailabel.segmentation.checkpoint import NETWORKS

    if conf.backend not in BACKENDS:
        raise ConfigError(SOURCE, f"'backend' must be one of {', '.join(BACKENDS)}, got {conf.backend!r}")
    if conf.network not in NETWORKS:
        raise ConfigError(SOURCE, f"'network' must be one of {', '.join(NETWORKS)}, got {conf.network!r}")
    if conf.backend == "nnunet" and conf.network != AppConf.network:
        raise ConfigError(SOURCE, "'network' chooses the native backend's network; with --conf backend nnunet the nnU-Net "
                                  "model folder is the network")
    if conf.backend == "nnunet" and conf.nnunet_model is None:
        raise ConfigError(SOURCE, "'backend' nnunet needs --conf nnunet_model <nnU-Net model folder>")
    if conf.backend == "native" and conf.nnunet_model is not None:
        raise ConfigError(SOURCE, "'nnunet_model' is only used with --conf backend nnunet")
    if conf.nnunet_model is not None and not (conf.nnunet_model / "dataset.json").is_file():
        raise ConfigError(SOURCE, f"'nnunet_model': {conf.nnunet_model} is not a trained nnU-Net model folder (no dataset.json)")


def _resolve_pretrained(value: str) -> tuple[Path | None, str]:
    if value.strip().lower() in _NO_ENCODER:
        return None, "no pretrained encoder (--conf pretrained none): the model trains from scratch"
    if value == "auto":
        default = Path(os.environ.get("DRASCLR_PRETRAINED") or DEFAULT_PRETRAINED).expanduser()
        if _is_encoder_dir(default):
            return default.resolve(), f"pretrained encoder {default.resolve()} (default location)"
        return None, (f"no pretrained encoder at the default location {default}: the model trains from scratch "
                      "(pass --conf pretrained <encoder folder> to start from one)")
    path = Path(value).expanduser()
    if path.is_file() and path.name == "encoder.pt":
        path = path.parent
    if not path.exists():
        raise ConfigError(SOURCE, f"'pretrained': {path} does not exist")
    if not _is_encoder_dir(path):
        raise ConfigError(SOURCE, f"'pretrained': {path} is not an exported encoder (needs encoder.pt and encoder.json)")
    return path.resolve(), f"pretrained encoder {path.resolve()}"


def _is_encoder_dir(path: Path) -> bool:
    return (path / "encoder.pt").is_file() and (path / "encoder.json").is_file()


def _resolve_device(value: str) -> str:
    import torch

    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(SOURCE, f"'device' is {value} but no CUDA GPU is visible (use cpu or auto)")
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(SOURCE, f"'device' is {value} but only {torch.cuda.device_count()} GPU(s) are visible")
    return value

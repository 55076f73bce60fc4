"""MONAI Label train task: fine-tune the emphysema model on the ``final`` labels, publish atomically.

One round: check the request's options, collect every scan with a ``final`` label (each label is
checked against its scan again: files can be dropped into ``labels/final`` by hand), prepare the
scans (lung mask, registration, 1 mm lung grid), start from the published model when it has the
same labels (otherwise a fresh model on the pretrained encoder, or from scratch without one),
fine-tune with the CPU-feasible recipe of :mod:`drasclr_monailabel.segmentation.training`, choose
the emphysema threshold on the labelled scans (``--conf emphysema_threshold labelled``, the
default; :mod:`drasclr_monailabel.segmentation.threshold`), then publish the checkpoint by an
atomic rename and write the round's statistics.

A round that crashes or is killed (3D Slicer's "auto-update model" stops a running round before
starting the next) leaves the previously published model in place; a lock file keeps two rounds
from running at once. No MLflow: the statistics go to ``emphysema_train_stats.json``, the round
number and history into the checkpoint's ``meta``, and progress to the server log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from drasclr_monailabel.config import from_mapping
from drasclr_monailabel.errors import DrasclrError
from drasclr_monailabel.tasks.conf import TRAINING_KEYS, ResolvedConf, check_training_options, fixed_threshold, training_overrides
from drasclr_monailabel.tasks.http import BAD_REQUEST, CONFLICT, as_http_errors, refuse
from drasclr_monailabel.tasks.model_store import ModelStore
from drasclr_monailabel.utils.torch_thread import run_on_torch_thread

if TYPE_CHECKING:
    from drasclr_monailabel.anatomy.scan_store import ScanStore

logger = logging.getLogger(__name__)

SOURCE = "train request"
MONAI_LABEL_KEYS = frozenset({"model", "local_rank", "gpus", "client_id", "multi_gpu", "bundle_path", "device",
                              "dataset", "val_split", "train_batch_size", "val_batch_size"})
"""Keys MONAI Label or its clients add to every train request; they do not configure this trainer."""


@dataclasses.dataclass
class TrainRequest:
    """Per-round overrides a client may send (``/train/emphysema`` body or Slicer's train options)."""

    max_epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    patch_size: int | None = None
    lr: float | None = None
    freeze_encoder_epochs: int | None = None
    encoder_batchnorm: str | None = None
    seed: int | None = None


def parse_train_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request's training options, checked (ConfigError naming the bad key or value)."""
    options = {k: v for k, v in request.items() if k not in MONAI_LABEL_KEYS}
    parsed = from_mapping(TrainRequest, options, SOURCE)
    values = {k: v for k, v in dataclasses.asdict(parsed).items() if v is not None}
    check_training_options(values, SOURCE)
    return values


class EmphysemaTrainTask(TrainTask):
    """Fine-tune and publish the ``emphysema`` model."""

    def __init__(self, resolved: ResolvedConf, store: ModelStore) -> None:
        super().__init__("Fine-tune the emphysema model on the final labels (from the pretrained encoder)")
        self.resolved = resolved
        self.store = store

    def config(self) -> dict[str, Any]:
        """Options a client may change per round, with their current values."""
        from drasclr_monailabel.segmentation.training import FinetuneConfig

        defaults = dataclasses.asdict(FinetuneConfig(**training_overrides(self.resolved.conf)))
        return {key: defaults[key] for key in TRAINING_KEYS}

    def stats(self) -> dict[str, Any]:
        return self.store.read_stats()

    def check_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The round's options (the app's, overridden by the request's); HTTP 400 naming a bad one."""
        with as_http_errors():
            return {**training_overrides(self.resolved.conf), **parse_train_request(request)}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        options = self.check_request(request)
        pairs = [(Path(d["image"]), Path(d["label"])) for d in datastore.datalist()]
        if not pairs:
            raise refuse(CONFLICT, "no 'final' labels yet: save at least one corrected label, then train")
        with self.store.training_lock():
            self.store.sweep_stale_temporaries()
            return run_on_torch_thread(self._round, pairs, options)  # one OpenMP pool per process (utils.torch_thread)

    def _round(self, pairs: list[tuple[Path, Path]], options: dict[str, Any]) -> dict[str, Any]:
        from drasclr_monailabel.segmentation.checkpoint import save_checkpoint
        from drasclr_monailabel.segmentation.training import FinetuneConfig, finetune

        start = time.perf_counter()
        cases, skipped = [], {}
        scans = self.resolved.scan_store()
        for image, label in pairs:
            try:
                cases.append(prepare_labelled_case(image, label, self.resolved.conf.labels, scans))
            except DrasclrError as exc:
                skipped[image.name] = str(exc)
                logger.warning("train: skipping %s: %s", image.name, exc)
        if not cases:
            raise refuse(CONFLICT, f"none of the {len(pairs)} labelled scans can be used: {skipped}")
        prepare_s = time.perf_counter() - start
        model, meta, pretrained = self._starting_model()
        config = FinetuneConfig(**options, device=self.resolved.device, amp=self.resolved.amp)
        one_patch_fails = config.encoder_batchnorm_trains(pretrained) and model.needs_batches(config.patch_size)
        if config.batch_size < 2 and one_patch_fails:  # torch would raise mid-round (HTTP 500 before)
            raise refuse(BAD_REQUEST, "'batch_size' must be at least 2 when the encoder's BatchNorm learns from the "
                                      "fine-tuning batches (from scratch, or encoder_batchnorm finetuning): one "
                                      f"{config.patch_size}^3 patch per step leaves a single value per channel at its "
                                      "deepest map, nothing to normalise with")
        logger.info("train: round %d on %d scan(s), %d epochs, device %s, %s", meta["round"], len(cases),
                    config.max_epochs, config.device, "from pretrained encoder" if pretrained else "from scratch")
        result = finetune(model, cases, config, pretrained=pretrained, progress=_log_progress)
        if result["steps"] == 0:
            raise refuse(CONFLICT, "training stopped before its first step; the published model is unchanged")
        threshold = self._threshold(model, cases)
        meta["emphysema_threshold"] = threshold["threshold"]
        meta.update(trained_on=sorted(case.case_id for case in cases), published=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    train={"epochs": result["epochs"], "steps": result["steps"], "loss": result["loss"][-1:],
                           "patch_size": config.patch_size})
        save_checkpoint(model, self.store.checkpoint, meta)
        stats = {"round": meta["round"], "version": self.store.version(), "cases": len(cases), "skipped": skipped,
                 "epochs": result["epochs"], "steps": result["steps"], "loss": result["loss"],
                 "stopped_early": result["stopped_early"], "pretrained": pretrained,
                 "prepare_seconds": round(prepare_s, 2), "train_seconds": result.get("seconds"),
                 "total_seconds": round(time.perf_counter() - start, 2), "config": dataclasses.asdict(config),
                 "threshold": threshold, "published": meta["published"]}
        self.store.write_stats(stats)
        logger.info("train: published round %d (%s) in %.1f s", stats["round"], stats["version"], stats["total_seconds"])
        return stats

    def _threshold(self, model: Any, cases: list[Any]) -> dict[str, Any]:
        """The emphysema threshold the published model is to be cut at (kept in its checkpoint, so an
        exported bundle cuts there too): the app's fixed one, or the one chosen on the round's
        labelled cases (:func:`~drasclr_monailabel.segmentation.threshold.choose_threshold`, with
        the seconds it took)."""
        from drasclr_monailabel.segmentation.precision import DTYPES
        from drasclr_monailabel.segmentation.threshold import choose_threshold

        fixed = fixed_threshold(self.resolved.conf)
        if fixed is not None:
            return {"threshold": fixed, "chosen_on_labelled": False}
        start = time.perf_counter()
        choice = choose_threshold(model, cases, self.resolved.device, DTYPES[self.resolved.infer_precision])
        choice.update(chosen_on_labelled=True, seconds=round(time.perf_counter() - start, 2))
        logger.info("train: emphysema threshold %.2f (fewest changed voxels in %d windows of the labelled scans, %.1f s)",
                    choice["threshold"], choice["windows"], choice["seconds"])
        return choice

    def _starting_model(self) -> tuple[Any, dict[str, Any], bool]:
        """Continue from the published model if it has the same labels and network, else a new one."""
        from drasclr_monailabel.segmentation.checkpoint import build_model, load_checkpoint, network_name

        labels, network = list(self.resolved.conf.labels), self.resolved.conf.network
        if self.store.exists():
            try:
                model, meta = load_checkpoint(self.store.checkpoint, self.resolved.device)
            except DrasclrError as exc:
                logger.warning("train: published model unusable (%s); starting a new one", exc)
            else:
                published = (list(meta.get("labels", [])), network_name(meta))
                if published == (labels, network):
                    meta["round"] = int(meta.get("round", 0)) + 1
                    return model, meta, meta.get("pretrained") is not None
                logger.info("train: published model has labels %s and network %s, not %s and %s; starting a new one",
                            *published, labels, network)
        pretrained = self.resolved.pretrained
        model, info = build_model(labels, pretrained, self.resolved.device, network=network)
        meta = dict(info["meta"], round=1)
        return model, meta, pretrained is not None


def prepare_labelled_case(image: Path, label: Path, label_names: list[str], scans: ScanStore | None = None) -> Any:
    """Read a scan and its final label (checked against the scan's grid) and prepare it for training
    (the anatomy from ``scans`` when that already holds the scan).

    Raises:
        InputError: unreadable scan or label, a label off the scan's grid, no lungs.
    """
    from drasclr_monailabel.io.readers import read_ct, scan_id_from_path
    from drasclr_monailabel.segmentation.case import prepare_case
    from drasclr_monailabel.segmentation.labels import SUBTYPES, LabelSet
    from drasclr_monailabel.tasks.labels import conform_label, read_grid

    stored = conform_label(label, read_grid(image), len(SUBTYPES), list(SUBTYPES))
    return prepare_case(read_ct(image), label_map=stored, label_set=LabelSet(tuple(label_names)),
                        case_id=scan_id_from_path(image), scans=scans)


def _log_progress(stats: dict[str, Any]) -> None:
    loss = stats["loss"][-1] if stats["loss"] else float("nan")
    logger.info("train: epoch %d/%d loss %.4f (%.1f s)", stats["epoch"], stats["max_epochs"], loss, stats.get("seconds", 0.0))

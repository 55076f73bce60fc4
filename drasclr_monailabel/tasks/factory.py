"""Build every task of one model from the resolved app options (used by ``apps/emphysema/lib/configs``).

One function per model returns a :class:`ModelTasks`; the app's config modules only call it, so
the app folder holds wiring and no logic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.tasks.conf import SOURCE, ResolvedConf, fixed_threshold
from drasclr_monailabel.tasks.embedders import JOINT_METHOD, encoder_method, patient_embedder
from drasclr_monailabel.tasks.embedding_cache import EmbeddingCache
from drasclr_monailabel.tasks.infer import EmphysemaInferTask, LaaInferTask, LungInferTask, LungMaskCache
from drasclr_monailabel.tasks.model_store import ModelStore
from drasclr_monailabel.tasks.scoring import EmbeddingScoring, EpistemicScoring
from drasclr_monailabel.tasks.strategies import DiversityStrategy, EpistemicStrategy, HybridStrategy
from drasclr_monailabel.tasks.train import EmphysemaTrainTask

logger = logging.getLogger(__name__)


@dataclass
class ModelTasks:
    """What one model contributes to the app."""

    infer: InferTask
    trainer: TrainTask | None = None
    strategies: dict[str, Strategy] = field(default_factory=dict)
    scoring: dict[str, ScoringMethod] = field(default_factory=dict)


def lung_tasks(resolved: ResolvedConf, lung_cache: LungMaskCache) -> ModelTasks:
    return ModelTasks(infer=LungInferTask(lung_cache))


def laa_tasks(resolved: ResolvedConf, lung_cache: LungMaskCache) -> ModelTasks:
    return ModelTasks(infer=LaaInferTask(resolved.conf.labels, lung_cache))


def emphysema_tasks(resolved: ResolvedConf, lung_cache: LungMaskCache) -> ModelTasks:
    """Infer and train of the segmentation model; scoring and strategies unless ``skip_scoring``.

    ``diversity``, ``hybrid`` and the ``embedding`` scoring need a pretrained encoder (a random
    encoder's embeddings would rank scans by noise); without one only ``epistemic`` is offered.
    A joint2d3d encoder serves the embeddings only: it is a 2D slice encoder, not a backbone for
    the 3D segmentation network, which then trains from scratch.
    With ``backend nnunet`` the model is served by :func:`nnunet_emphysema_tasks` instead.
    """
    conf = resolved.conf
    if conf.backend == "nnunet":
        return nnunet_emphysema_tasks(resolved, lung_cache)
    store = ModelStore(resolved.model_dir)
    infer = EmphysemaInferTask(conf.labels, store, resolved.device, lung_cache, resolved.scan_store(),
                               conf.epistemic_windows, resolved.infer_overlap, resolved.infer_precision,
                               fixed_threshold(conf))
    trainer = None if conf.skip_training else EmphysemaTrainTask(_backbone_conf(resolved), store)
    tasks = ModelTasks(infer=infer, trainer=trainer)
    if conf.skip_scoring:
        return tasks
    tasks.scoring["epistemic"] = EpistemicScoring(infer.epistemic_score, store.version, conf.epistemic_samples,
                                                  conf.epistemic_max_images)
    tasks.strategies["epistemic"] = EpistemicStrategy(store.version, conf.reserve_seconds)
    cache = _add_diversity(resolved, tasks)
    if cache is not None:
        tasks.strategies["hybrid"] = HybridStrategy(store.version, cache, conf.reserve_seconds)
    return tasks


def nnunet_emphysema_tasks(resolved: ResolvedConf, lung_cache: LungMaskCache) -> ModelTasks:
    """Infer by a trained nnU-Net model folder; ``diversity`` when a pretrained encoder is set.

    There is no trainer (nnU-Net trains outside the app on a ``drasclr export-nnunet`` dataset) and
    no MC-dropout uncertainty (nnU-Net networks have no dropout), so no ``epistemic``/``hybrid``.

    Raises:
        ConfigError: the model's labels (its dataset.json) differ from the app's ``labels``.
    """
    from drasclr_monailabel.tasks.nnunet_infer import NnunetInferTask

    conf = resolved.conf
    assert conf.nnunet_model is not None
    infer = NnunetInferTask(conf.nnunet_model, resolved.device, lung_cache, resolved.scan_store())
    if infer.labels != resolved.labels:
        raise ConfigError(SOURCE, f"'nnunet_model' {conf.nnunet_model} segments {infer.labels}, but the app's "
                                  f"labels are {resolved.labels} (set --conf labels to match)")
    logger.info("emphysema model served by nnU-Net from %s (infer only: train it with nnUNetv2_train)", conf.nnunet_model)
    tasks = ModelTasks(infer=infer)
    if not conf.skip_scoring:
        _add_diversity(resolved, tasks)
    return tasks


def _add_diversity(resolved: ResolvedConf, tasks: ModelTasks) -> EmbeddingCache | None:
    """Add the ``embedding`` scoring and ``diversity`` strategy; return their cache (None without an encoder)."""
    if resolved.pretrained is None:
        logger.info("diversity and hybrid strategies are off: they need a pretrained encoder")
        return None
    embedder = patient_embedder(resolved)
    cache = EmbeddingCache(resolved.cache_dir, embedder.key)
    tasks.scoring["embedding"] = EmbeddingScoring(embedder, cache, embedder.description)
    tasks.strategies["diversity"] = DiversityStrategy(cache, resolved.conf.reserve_seconds, embedder.description)
    return cache


def _backbone_conf(resolved: ResolvedConf) -> ResolvedConf:
    """``resolved`` for the segmentation network: without the encoder when it is joint2d3d's, or when
    the network is SegResNet (which has no place for one)."""
    if resolved.pretrained is None:
        return resolved
    if resolved.conf.network == "segresnet":
        logger.info("--conf network segresnet: the encoder %s serves the embedding scoring, diversity and hybrid; "
                    "SegResNet trains from scratch", resolved.pretrained)
        return replace(resolved, pretrained=None, pretrained_reason=f"encoder {resolved.pretrained} (embeddings only)")
    if encoder_method(resolved.pretrained) != JOINT_METHOD:
        return resolved
    logger.info("%s is a joint2d3d encoder: it serves the embedding scoring, diversity and hybrid; "
                "the segmentation model trains from scratch", resolved.pretrained)
    return replace(resolved, pretrained=None, pretrained_reason=f"joint2d3d encoder {resolved.pretrained} (embeddings only)")

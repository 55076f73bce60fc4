"""Networks of the joint image-volume method: the exported encoder and the trained whole.

:class:`Joint2d3dEncoder` is what ``encoder.pt`` holds (architecture name ``joint2d3d``, rebuilt by
:func:`drasclr_monailabel.models.export.load_encoder` once this module is imported): the 2D slice
encoder and the volume transformer. :class:`Joint2d3dNetwork` adds what only training needs: the
slice and volume clustering heads and the masked-token predictor; its single ``forward`` computes
everything a step needs (DDP requires one forward per backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drasclr_monailabel.models.export import register_encoder_builder
from drasclr_monailabel.models.slice_encoder import (
    SliceEncoder,
    SliceEncoderArchitecture,
)
from drasclr_monailabel.models.volume_transformer import (
    VolumeTransformer,
    VolumeTransformerArchitecture,
)

ARCHITECTURE_NAME = "joint2d3d"


class Joint2d3dEncoder(nn.Module):
    """Slice encoder + volume transformer.

    ``embed_slices``: (N, 1, H, W) slices in network units -> (N, d) slice tokens.
    ``embed_volume``: (B, S, d) tokens of S slices in order + positions -> contextual tokens
    (B, S, d) and the volume embedding (B, d), their mean.
    """

    def __init__(self, slice_encoder: SliceEncoderArchitecture, transformer: VolumeTransformerArchitecture) -> None:
        super().__init__()
        self.slices = SliceEncoder(slice_encoder)
        self.volume = VolumeTransformer(slice_encoder.embedding_dim, transformer)

    @property
    def embedding_dim(self) -> int:
        return self.slices.architecture.embedding_dim

    def architecture(self) -> dict[str, Any]:
        """The ``architecture`` block of ``encoder.json``."""
        return {"name": ARCHITECTURE_NAME, "slice_encoder": self.slices.architecture.to_dict(),
                "transformer": self.volume.architecture.to_dict()}

    def embed_slices(self, slices: torch.Tensor) -> torch.Tensor:
        return self.slices(slices).token

    def embed_volume(self, tokens: torch.Tensor, positions: torch.Tensor, kinds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        contextual = self.volume(tokens, positions, kinds)
        return contextual, contextual.mean(dim=1)


def encoder_from_architecture(architecture: dict[str, Any]) -> Joint2d3dEncoder:
    """A freshly initialised encoder from an ``architecture`` block (its ``name`` is optional)."""
    return Joint2d3dEncoder(SliceEncoderArchitecture(**architecture["slice_encoder"]),
                            VolumeTransformerArchitecture(**architecture["transformer"]))


register_encoder_builder(ARCHITECTURE_NAME, encoder_from_architecture)


class ClusteringHead(nn.Module):
    """Projection MLP (Linear, BatchNorm, ReLU, Linear), L2-normalised, scored by ``heads`` sets of
    ``prototypes`` unit vectors (bias-free linear layers; SwAV learns them, DeepCluster-v2 sets
    them to k-means centroids and keeps them out of the optimiser)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, prototypes: int, heads: int, learned: bool) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        self.prototypes = nn.ModuleList(nn.Linear(out_dim, prototypes, bias=False) for _ in range(heads))
        for layer in self.prototypes:
            layer.weight.requires_grad_(learned)
        self.normalise_prototypes()

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        for layer in self.prototypes:
            layer.weight.copy_(F.normalize(layer.weight, dim=1))

    def forward(self, features: torch.Tensor, frozen: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(N, in_dim) -> unit projections (N, out_dim) and per head the scores (N, prototypes).

        ``frozen``: score with detached prototypes (no gradient reaches them this step).
        """
        z = F.normalize(self.projection(features), dim=1)
        scores = [z @ (layer.weight.detach() if frozen else layer.weight).t() for layer in self.prototypes]
        return z, scores


@dataclass
class StepPlan:
    """What one forward pass computes (from the schedule stage and the batch).

    ``encoder_in_3d``: the 3D losses back-propagate into the slice encoder's trunk (through the
    slices marked in the inputs' ``backprop``, else all); ``recompute``: with activation
    checkpointing there.
    """

    intra: bool
    inter: bool
    masked: bool
    encoder_in_3d: bool
    freeze_prototypes: bool
    recompute: bool = False


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class Joint2d3dNetwork(nn.Module):
    """Encoder plus training heads; see :meth:`forward`."""

    def __init__(self, slice_encoder: SliceEncoderArchitecture, transformer: VolumeTransformerArchitecture, projection_hidden: int,
                 projection_dim: int, slice_prototypes: int, volume_prototypes: int, heads: int, learned_prototypes: bool) -> None:
        super().__init__()
        self.encoder = Joint2d3dEncoder(slice_encoder, transformer)
        d = slice_encoder.embedding_dim
        self.slice_head = ClusteringHead(self.encoder.slices.pooled_dim, projection_hidden, projection_dim, slice_prototypes, heads, learned_prototypes)
        self.volume_head = ClusteringHead(d, projection_hidden, projection_dim, volume_prototypes, heads, learned_prototypes)
        self.predictor = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, inputs: dict[str, Any], plan: StepPlan) -> dict[str, Any]:
        """Compute the step's outputs.

        ``inputs``: ``crops`` (list of (n_c * B, 1, h, w) tensors, one per crop size, crop-major)
        and, for 3D losses, ``views`` (2V * S, 1, G, G) (view-major per volume: volume v has rows
        of views 2v and 2v + 1), ``positions`` (2V, S), ``kinds`` (2V,), ``mask`` (2V, S) bool,
        and optionally ``backprop`` (2V * S,) bool: the view slices whose trunk pass keeps its
        gradient (see :meth:`view_features`).

        Returns a dict with ``slice_z`` (n_global * B, P) and ``slice_scores`` (per head, per crop
        (B, K)) when ``plan.intra``; ``volume_z`` (2V, P) and ``volume_scores`` (per head, per view
        (V, K)) when ``plan.inter``; ``predicted`` and ``target`` (2V, S, d) when ``plan.masked``.
        """
        out: dict[str, Any] = {}
        if plan.intra:
            batch = inputs["batch_size"]
            pooled = torch.cat([self.encoder.slices.stage_pools(crops)[-1] for crops in inputs["crops"]])
            z, scores = self.slice_head(pooled, frozen=plan.freeze_prototypes)
            out["slice_z"] = z[: inputs["global_crops"] * batch]
            out["slice_scores"] = [list(head.split(batch)) for head in scores]
        if plan.inter or plan.masked:
            positions, kinds = inputs["positions"], inputs["kinds"]
            views, s = positions.shape
            features = self.view_features(inputs["views"], inputs.get("backprop"), plan)
            tokens = self.encoder.slices.token(features).view(views, s, -1)
            if plan.inter:
                _, volume = self.encoder.embed_volume(tokens, positions, kinds)
                z, scores = self.volume_head(volume, frozen=plan.freeze_prototypes)
                out["volume_z"] = z
                out["volume_scores"] = [[head[0::2], head[1::2]] for head in scores]
            if plan.masked:
                contextual = self.encoder.volume(tokens, positions, kinds, mask=inputs["mask"])
                out["predicted"] = self.predictor(contextual)
                out["target"] = tokens.detach()
        return out

    def view_features(self, slices: torch.Tensor, backprop: torch.Tensor | None, plan: StepPlan) -> torch.Tensor:
        """Multi-scale trunk features (N, C1 + ... + C4) of the volume views' slices (N, 1, G, G).

        Without ``plan.encoder_in_3d`` no gradient reaches the trunk. Otherwise the slices marked
        in ``backprop`` (N,) bool (None: all) keep their gradient, scaled by N / marked so that
        its expectation over random choices is the gradient through every slice; the others run
        without gradient, so activation memory grows with the marked slices only.
        """
        trunk = self.encoder.slices.multi_scale
        if not (plan.encoder_in_3d and torch.is_grad_enabled()):
            with torch.no_grad():
                return trunk(slices)
        if backprop is None or bool(backprop.all()):
            return trunk(slices, plan.recompute)
        chosen, rest = torch.nonzero(backprop).squeeze(1), torch.nonzero(~backprop).squeeze(1)
        picked = _ScaleGradient.apply(trunk(slices[chosen], plan.recompute), slices.shape[0] / chosen.numel())
        with torch.no_grad():
            others = trunk(slices[rest])
        merged = torch.cat([picked, others.to(picked.dtype)])
        return merged[torch.argsort(torch.cat([chosen, rest]))]

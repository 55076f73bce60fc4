"""The interface between the generic trainer and a pretraining method, and the method registry.

The trainer (:mod:`drasclr_monailabel.ssl.trainer`) owns everything that is the same for every
self-supervised method: device and AMP, DDP, optimiser and schedule, checkpoints and exact resume,
TensorBoard, the progress bar, export. A method supplies what differs: its data (a dataset read by
batch keys and a resumable sampler of those keys), its trainable network, how a batch becomes a
loss, what happens after each optimiser step (momentum encoders, queues), its extra state, and
which part of the network is exported.

A new method subclasses :class:`PretrainMethod`, defines a config dataclass with ``method``,
``train`` and ``optim`` fields, and is listed in :data:`METHOD_MODULES`; that module must call
:func:`register_method` when imported.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.ssl.distributed import DistContext

# Method name -> module that registers it on import (keeps `drasclr pretrain --help` light).
METHOD_MODULES = {"drasclr": "drasclr_monailabel.ssl.drasclr", "joint2d3d": "drasclr_monailabel.ssl.joint2d3d.method"}


class EpochSampler(Protocol):
    """A sampler of batch keys whose order depends only on (seed, epoch) and can start mid-epoch."""

    batches_per_epoch: int

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass
class StepOutput:
    """What :meth:`PretrainMethod.training_step` returns.

    Attributes:
        loss: scalar to back-propagate.
        samples: samples in this step on this rank (for throughput).
        metrics: scalars to log (detached tensors; read only at logging steps).
    """

    loss: torch.Tensor
    samples: int
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ExportSpec:
    """What to export: ``encoder.json`` fields (without ``format`` and ``training``) and where the
    encoder's weights sit in the trainable network's ``state_dict`` (key prefix)."""

    metadata: dict[str, Any]
    state_dict_prefix: str


class PretrainMethod(abc.ABC):
    """One self-supervised method, as the trainer drives it.

    Call order: ``__init__`` (build networks on ``context.device``, read the data index),
    ``build_data``, ``plan``, then every step ``prepare_batch`` -> ``training_step`` (under
    autocast) -> backward and optimiser step -> ``after_step``; at the end ``before_export``. ``state_dict``/``load_state_dict`` hold the
    state outside the trainable network and the optimiser (e.g. key encoder, queues).
    """

    name: str = ""
    # True when some trainable parameters may get no gradient in a step (stages, frozen parts):
    # DDP must then look for them (find_unused_parameters), at some cost per step.
    find_unused_parameters: bool = False

    def __init__(self, config: Any, context: DistContext) -> None:
        self.config = config
        self.context = context

    @property
    @abc.abstractmethod
    def network(self) -> nn.Module:
        """The trainable network: optimised, wrapped in DDP, checkpointed by the trainer."""

    @abc.abstractmethod
    def build_data(self) -> tuple[Dataset, EpochSampler]:
        """The dataset (``dataset[key]`` -> one whole batch) and this rank's sampler of keys."""

    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Turn a batch already on the device into network inputs (e.g. augment), outside autocast."""
        return batch

    @abc.abstractmethod
    def training_step(self, network: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> StepOutput:
        """Forward pass and loss. ``network`` is :attr:`network`, possibly DDP-wrapped: call it
        exactly once per step so DDP sees one forward per backward."""

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (``step`` counts completed steps)."""

    def plan(self, total_steps: int) -> dict[str, Any]:
        """What the run of ``total_steps`` will do, for ``plan.json`` and the log (after
        :meth:`build_data`); a ``warnings`` list holds what the user should change."""
        return {"warnings": []}

    def before_export(self) -> None:
        """Called on every rank once the run is complete, before the final checkpoint and the
        export (e.g. to recompute BatchNorm statistics)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state outside :attr:`network` (tensors and plain containers only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    @abc.abstractmethod
    def export_spec(self) -> ExportSpec:
        """Which weights to export and the ``encoder.json`` metadata describing them."""


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its config dataclass and its constructor."""

    name: str
    config_schema: type
    factory: Callable[[Any, DistContext, Path], PretrainMethod]


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, config_schema: type, factory: Callable[[Any, DistContext, Path], PretrainMethod]) -> None:
    """Register a method; ``factory(config, context, data_root)`` builds it."""
    _REGISTRY[name] = MethodEntry(name, config_schema, factory)


def get_method(name: str, source: str = "method") -> MethodEntry:
    """The registered method ``name`` (importing its module on first use)."""
    if name not in _REGISTRY and name in METHOD_MODULES:
        importlib.import_module(METHOD_MODULES[name])
    if name not in _REGISTRY:
        raise ConfigError(source, f"unknown method {name!r} (known: {', '.join(sorted(METHOD_MODULES))})")
    return _REGISTRY[name]

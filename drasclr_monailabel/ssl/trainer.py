"""The generic pretraining loop shared by every method (see :mod:`drasclr_monailabel.ssl.method`).

It runs one process on the CPU or one GPU, or one process per GPU/CPU under torchrun (DDP), and
handles: the linear learning-rate scaling and cosine schedule, AMP on GPU, atomic checkpoints and
exact resume (network, method state such as queues, optimiser, loss scaler, random generators and
the sampler position, all restored), graceful stop on SIGTERM/SIGINT (checkpoint, then exit; all
ranks agree on the step), TensorBoard, a progress bar, and the encoder export at the end.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from drasclr_monailabel.config import to_dict
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.export import save_encoder
from drasclr_monailabel.ssl import checkpoint as ckpt
from drasclr_monailabel.ssl.distributed import (
    DistContext,
    all_gather_objects,
    any_rank,
    setup,
    teardown,
)
from drasclr_monailabel.ssl.method import PretrainMethod, StepOutput, get_method
from drasclr_monailabel.utils.atomic import write_json, write_text

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes:
        step: optimiser steps completed in total (including those before a resume).
        total_steps: steps the schedule runs to.
        completed: the run reached ``total_steps`` (False: stopped early, resumable).
        history: the metrics logged at each logging step (``step``, ``lr``, ``loss``, ...).
        export_dir: folder of ``encoder.pt``/``encoder.json`` when completed.
    """

    step: int
    total_steps: int
    completed: bool
    history: list[dict[str, float]] = field(default_factory=list)
    export_dir: Path | None = None


def planned_steps(train: Any, steps_per_epoch: int) -> int:
    """The schedule's length: ``train.max_steps``, else ``train.epochs`` epochs."""
    return train.max_steps or train.epochs * steps_per_epoch


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_steps: int, schedule: str) -> float:
    """Rate for optimiser step ``step`` (0-based): linear warm-up, then cosine to 0 or constant."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Drive ``method`` with the ``train`` and ``optim`` sections of ``config``, writing into ``run_dir``."""

    def __init__(self, method: PretrainMethod, config: Any, run_dir: str | Path, context: DistContext) -> None:
        self.method = method
        self.config = config
        self.train = config.train
        self.optim = config.optim
        self.run_dir = Path(run_dir)
        self.context = context
        self.device = context.device
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.train.amp) if self.device.type == "cuda" else None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(np.random.SeedSequence([self.train.seed, context.rank]).generate_state(1)[0]))
        self._stop_requested = False

    @property
    def last_path(self) -> Path:
        return ckpt.checkpoint_dir(self.run_dir) / ckpt.LAST_NAME

    def fit(self, resume: bool = False, stop_at_step: int | None = None) -> FitResult:
        """Train until the schedule ends, or until ``stop_at_step`` / a stop signal (then checkpoint).

        Args:
            resume: continue from ``run_dir/checkpoints/last.pt`` exactly where it stopped.
            stop_at_step: stop (with a checkpoint) after this many steps in total; for tests and
                for splitting a long run into jobs.
        """
        dataset, sampler = self.method.build_data()
        steps_per_epoch = sampler.batches_per_epoch
        total_steps = planned_steps(self.train, steps_per_epoch)
        end_step = min(total_steps, stop_at_step) if stop_at_step is not None else total_steps
        network = self.method.network.to(self.device)
        global_batch = self.train.batch_size * self.context.world_size
        base_lr = self.optim.lr * global_batch / self.optim.reference_batch
        optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=base_lr,
                                    momentum=self.optim.momentum, weight_decay=self.optim.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        step = 0
        if resume:
            step = self._restore(optimizer, scaler, steps_per_epoch)
        else:
            self._start_run_dir()
        self._report_plan(self.method.plan(total_steps))
        wrapped: nn.Module = network
        if self.context.distributed:
            wrapped = DistributedDataParallel(network, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                              find_unused_parameters=self.method.find_unused_parameters)
        loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=self.train.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=self.train.num_workers > 0)
        history: list[dict[str, float]] = []
        logger = _Logger(self, total_steps, step) if self.context.is_main else None
        network.train()
        try:
            with self._stop_signals():
                for batch in self._batches(loader, sampler, step, end_step, steps_per_epoch):
                    lr = learning_rate(step, total_steps, base_lr, self.optim.warmup_steps, self.optim.schedule)
                    output = self._optimise(wrapped, optimizer, scaler, batch, lr)
                    step += 1
                    self.method.after_step(step)
                    if logger is not None:
                        record = logger.update(step, lr, output)
                        if record is not None:
                            history.append(record)
                    # Ranks agree on stopping at logging steps (one collective there, not every step).
                    stop = self._stop_requested if not self.context.distributed else (
                        step % self.train.log_every == 0 and any_rank(self._stop_requested, self.context))
                    if step % self.train.checkpoint_every == 0 or stop or step == end_step:
                        self._save(ckpt.LAST_NAME, network, optimizer, scaler, step, steps_per_epoch)
                        self._write_progress(step, total_steps)
                    if stop:
                        log.warning("stop requested: checkpoint written at step %d; continue with --resume", step)
                        break
        finally:
            if logger is not None:
                logger.close()
        completed = step >= total_steps
        export_dir = None
        if completed:
            self.method.before_export()
            self._save(ckpt.FINAL_NAME, network, optimizer, scaler, step, steps_per_epoch)
            export_dir = self._export(network, step, steps_per_epoch) if self.context.is_main else None
        return FitResult(step=step, total_steps=total_steps, completed=completed, history=history, export_dir=export_dir)

    def _optimise(self, network: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  batch: dict[str, Any], lr: float) -> StepOutput:
        """One optimiser step on ``batch`` at learning rate ``lr``."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = self.method.prepare_batch(_to_device(batch, self.device), self.generator)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            output = self.method.training_step(network, batch, self.generator)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(output.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return output

    def _batches(self, loader: DataLoader, sampler: Any, step: int, end_step: int, steps_per_epoch: int) -> Iterator[dict]:
        """Batches from global step ``step`` to ``end_step``, epoch by epoch (stops when the caller breaks)."""
        while step < end_step:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, offset)
            for batch in loader:
                yield batch
                step += 1
                if step >= end_step:
                    return

    def _start_run_dir(self) -> None:
        if self.last_path.exists():
            raise InputError(self.run_dir, "holds a run already (checkpoints/last.pt): pass --resume to continue it, or choose another --out")
        if self.context.is_main:
            import yaml

            write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.config), sort_keys=False))

    def _restore(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, steps_per_epoch: int) -> int:
        payload = ckpt.load_checkpoint(self.last_path)
        ckpt.check_resumable(self.last_path, payload["config"], to_dict(self.config), to_dict(type(self.config)()))
        if payload["world_size"] != self.context.world_size:
            raise InputError(self.last_path, f"was written by {payload['world_size']} processes, now {self.context.world_size}: "
                                             "resume with the same number (the data order depends on it)")
        if payload["steps_per_epoch"] != steps_per_epoch:
            raise InputError(self.last_path, f"run had {payload['steps_per_epoch']} steps per epoch, the data now gives "
                                             f"{steps_per_epoch}: the cache changed, start a new run")
        try:
            self.method.network.load_state_dict(payload["network"])
            self.method.load_state_dict(payload["method_state"])
        except (KeyError, RuntimeError) as exc:
            raise InputError(self.last_path, f"holds state this version cannot continue ({str(exc).splitlines()[0][:200]}); "
                                             "it was written by an earlier version: start a new run") from None
        optimizer.load_state_dict(payload["optimizer"])
        scaler.load_state_dict(payload["scaler"])
        rng = payload["rng"][self.context.rank]
        self.generator.set_state(rng["augment"])
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        log.info("resumed %s at step %d", self.run_dir, payload["step"])
        return int(payload["step"])

    def _save(self, name: str, network: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              step: int, steps_per_epoch: int) -> None:
        rng = {"augment": self.generator.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        rng_all = all_gather_objects(rng, self.context)  # collective: every rank calls _save
        if not self.context.is_main:
            return
        spec = self.method.export_spec()
        ckpt.save_checkpoint(ckpt.checkpoint_dir(self.run_dir) / name, {
            "method": self.method.name, "config": to_dict(self.config), "step": step, "steps_per_epoch": steps_per_epoch,
            "world_size": self.context.world_size, "network": network.state_dict(), "method_state": self.method.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_all,
            "export": {"metadata": spec.metadata, "state_dict_prefix": spec.state_dict_prefix},
        })

    def _report_plan(self, plan: dict[str, Any]) -> None:
        """Log the method's plan (warnings as warnings) and keep it as ``plan.json`` in the run folder."""
        if not self.context.is_main:
            return
        for warning in plan.get("warnings", []):
            log.warning("%s", warning)
        for name, value in plan.items():
            if name != "warnings":
                log.info("plan: %s %s", name, value)
        write_json(self.run_dir / "plan.json", plan)

    def _write_progress(self, step: int, total_steps: int) -> None:
        """``progress.json`` beside the checkpoints: the step of ``last.pt`` (for launchers and monitoring)."""
        if self.context.is_main:
            write_json(self.run_dir / "progress.json", {"step": step, "total_steps": total_steps, "completed": step >= total_steps,
                                                        "checkpoint": f"checkpoints/{ckpt.LAST_NAME}",
                                                        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def _export(self, network: nn.Module, step: int, steps_per_epoch: int) -> Path:
        spec = self.method.export_spec()
        state = network.state_dict()
        metadata = {**spec.metadata, "training": training_block(to_dict(self.config), step, steps_per_epoch, self.context.world_size)}
        save_encoder(self.run_dir, select_prefix(state, spec.state_dict_prefix), metadata)
        return self.run_dir

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGTERM / first SIGINT: finish the step, checkpoint, stop. A second SIGINT aborts."""
        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_requested = True

        try:
            previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def select_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def training_block(config: dict[str, Any], step: int, steps_per_epoch: int, world_size: int) -> dict[str, Any]:
    """The ``training`` block of ``encoder.json`` (``config`` as a plain dict)."""
    return {"steps": step, "epochs": round(step / steps_per_epoch, 3), "steps_per_epoch": steps_per_epoch,
            "world_size": world_size, "global_batch": config["train"]["batch_size"] * world_size,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": config}


def run_pretraining(config: Any, data_root: str | Path, run_dir: str | Path, resume: bool = False,
                    stop_at_step: int | None = None) -> FitResult:
    """Build the method named by ``config.method`` and train it (one process, or one rank of torchrun)."""
    entry = get_method(config.method)
    context = setup(config.train.device)
    try:
        torch.manual_seed(config.train.seed)
        method = entry.factory(config, context, Path(data_root))
        return Trainer(method, config, run_dir, context).fit(resume=resume, stop_at_step=stop_at_step)
    finally:
        teardown(context)


def plan_pretraining(config: Any, data_root: str | Path) -> dict[str, Any]:
    """What a run of ``config`` on ``data_root`` would do (the method's plan, e.g. queue fill),
    without training or writing anything."""
    entry = get_method(config.method)
    context = setup(config.train.device)
    try:
        method = entry.factory(config, context, Path(data_root))
        _, sampler = method.build_data()
        total_steps = planned_steps(config.train, sampler.batches_per_epoch)
        return {"total_steps": total_steps, "steps_per_epoch": sampler.batches_per_epoch, **method.plan(total_steps)}
    finally:
        teardown(context)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device``; other values (landmark indices as ints) stay on the host."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


class _Logger:
    """TensorBoard scalars and the tqdm bar (main process only).

    Loss and metrics are averaged over the steps since the last logging step (kept as device
    tensors in between, so logging costs one synchronisation per interval), which makes the
    curves readable when a single step's value is noisy (each step is one landmark).
    """

    def __init__(self, trainer: Trainer, total_steps: int, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.every = trainer.train.log_every
        self.world_size = trainer.context.world_size
        self.writer = SummaryWriter(log_dir=str(trainer.run_dir / "tensorboard"), purge_step=start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=not trainer.train.progress, desc=f"pretrain {trainer.method.name}")
        self.samples = 0
        self.clock = time.perf_counter()
        self.last_step = start_step
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def update(self, step: int, lr: float, output: Any) -> dict[str, float] | None:
        self.samples += output.samples * self.world_size
        for name, value in {"loss": output.loss, **output.metrics}.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1
        if step % self.every and step != self.bar.total:
            return None
        now = time.perf_counter()
        rate = self.samples / max(now - self.clock, 1e-9)
        averages = {name: float(total) / self.counts[name] for name, total in self.sums.items()}
        record = {"step": float(step), "lr": lr, "samples_per_s": rate, **averages}
        self.sums, self.counts = {}, {}
        for name, value in record.items():
            if name != "step":
                self.writer.add_scalar(f"train/{name}", value, step)
        self.bar.update(step - self.last_step)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", samples_s=f"{rate:.1f}", lr=f"{lr:.2e}")
        self.samples, self.clock, self.last_step = 0, now, step
        return record

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
        self.bar.close()

"""End-to-end DrasCLR pretraining throughput (landmark samples per second), data loading to optimiser step.

Runs the real trainer (``drasclr pretrain``'s code: patch reading from a cache with mmap, on-device
augmentation of query, key and neighbour views, query/key encoders, queues, SGD) on a synthetic
cache written to a temporary folder (so it runs anywhere), twice in the same process:

* ``batched``: this package (one kernel + one convolution per layer for a one-landmark batch);
* ``loop``: the same pipeline with the per-sample convolution loop of the original
  implementation, the baseline.

Throughput counts centre patches (the batch size) per second over ``--steps`` steps after
``--warmup`` steps; each sample also costs a key view and k = 2 neighbour views.

    python benchmarks/pretrain_throughput.py --out benchmarks/results/pretrain_throughput_cpu.json
    python benchmarks/pretrain_throughput.py --device cuda --batch 32 --out benchmarks/results/pretrain_throughput_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from drasclr_monailabel.models.condconv import CondConv3d
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.ssl.synthetic import (
    write_synthetic_atlas,
    write_synthetic_cache,
)
from drasclr_monailabel.ssl.trainer import run_pretraining
from drasclr_monailabel.utils.atomic import write_json


@contextlib.contextmanager
def per_sample_loop() -> Iterator[None]:
    """Make every CondConv3d run the per-sample loop (the reference formulation) inside the block."""
    batched = CondConv3d.forward

    def loop_forward(self: CondConv3d, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        groups = location.reshape(-1, location.shape[-1])
        return self.forward_per_sample(x, groups.repeat_interleave(x.shape[0] // groups.shape[0], dim=0))

    CondConv3d.forward = loop_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        CondConv3d.forward = batched  # type: ignore[method-assign]


def measure(cache: Path, atlas: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Samples per second over the measured steps of one short run."""
    overrides = [f"data.atlas={atlas}", f"train.batch_size={args.batch}", f"train.max_steps={args.warmup + args.steps}",
                 f"train.num_workers={args.workers}", f"train.device={args.device}", f"train.amp='{args.amp}'",
                 "train.log_every=1", "train.progress=false", "train.checkpoint_every=1000000", "moco.queue_size=256"]
    result = run_pretraining(load_recipe(None, overrides), cache, run_dir)
    measured = result.history[args.warmup:]
    seconds = sum(args.batch / record["samples_per_s"] for record in measured)
    return {"samples_per_s": args.batch * len(measured) / seconds, "seconds_per_step": seconds / len(measured),
            "steps": len(measured), "final_loss": measured[-1]["loss"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default="off", choices=["off", "fp16", "bf16"], help="mixed precision (GPU)")
    parser.add_argument("--batch", type=int, default=8, help="samples per step (the full recipe uses 32 per GPU)")
    parser.add_argument("--steps", type=int, default=6, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured first steps")
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers")
    parser.add_argument("--subjects", type=int, default=16, help="synthetic scans in the cache")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="drasclr-throughput-") as tmp:
        folder = Path(tmp)
        atlas = write_synthetic_atlas(folder / "atlas")
        cache = write_synthetic_cache(folder / "cache", atlas, n_subjects=args.subjects)
        batched = measure(cache, atlas, folder / "batched", args)
        print(f"batched  {batched['samples_per_s']:8.2f} samples/s", flush=True)
        with per_sample_loop():
            loop = measure(cache, atlas, folder / "loop", args)
        print(f"loop     {loop['samples_per_s']:8.2f} samples/s", flush=True)
    device = torch.device(args.device)
    result = {
        "benchmark": "DrasCLR pretraining throughput, end to end",
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "amp": args.amp,
        "workers": args.workers,
        "encoder": "full DrasCLR encoder (13 CondConv layers, 8 experts), 32^3 patches, k = 2 neighbours",
        "batched": batched,
        "loop_baseline": loop,
        "speedup_vs_loop": batched["samples_per_s"] / loop["samples_per_s"],
    }
    write_json(args.out, result)
    print(f"speedup over the per-sample loop: {result['speedup_vs_loop']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Forward + backward time of the DrasCLR encoder on a batch of 32^3 patches, four formulations.

In one run, on the same random batch (default 32 patches) and the same layer shapes:

* ``cond_shared``: the conditional encoder with the whole batch at one landmark (one mixed kernel
  and one ordinary convolution per layer; DrasCLR training batches are like this);
* ``cond_grouped``: the conditional encoder with a different location per sample (one grouped
  convolution per layer, the batch folded into channels; on the 2^3 and 1^3 maps of the last
  layers the experts go first: one matrix product, then a per-sample weighted sum);
* ``plain``: the same network with ordinary ``nn.Conv3d`` layers (no conditioning): the floor;
* ``loop``: the original formulation, a Python loop with one kernel and one convolution per sample.

Reported: median seconds over ``--repeats`` timed iterations (after ``--warmup``; the
formulations are interleaved round by round so load changes on a shared machine hit all alike), the ratios
``cond_vs_plain_ratio`` (goal <= 1.15) and ``loop_vs_cond_speedup``, and the parameter counts.

    python benchmarks/encoder.py --out benchmarks/results/encoder_cpu.json
    python benchmarks/encoder.py --device cuda --out benchmarks/results/encoder_cuda.json
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from drasclr_monailabel.models.condconv import CondConv3d
from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.utils.atomic import write_json

GOAL_RATIO = 1.15


class PlainConv3d(nn.Conv3d):
    """An ordinary convolution with CondConv3d's call signature (the location is ignored)."""

    def forward(self, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class LoopConv3d(nn.Module):
    """Wraps a CondConv3d so that it always runs the per-sample loop."""

    def __init__(self, conv: CondConv3d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        per_sample = location.reshape(-1, location.shape[-1]).expand(x.shape[0], -1) if location.dim() == 1 else location
        return self.conv.forward_per_sample(x, per_sample)


def replace_convs(encoder: nn.Module, make: Callable[[CondConv3d], nn.Module]) -> nn.Module:
    """A copy of ``encoder`` with every CondConv3d replaced by ``make(conv)``."""
    encoder = copy.deepcopy(encoder)
    for module in list(encoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, CondConv3d):
                setattr(module, name, make(child))
    return encoder


def plain_of(conv: CondConv3d) -> nn.Module:
    return PlainConv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)


def forward_backward_seconds(model: nn.Module, x: torch.Tensor, location: torch.Tensor, amp: bool) -> tuple[float, float]:
    """Wall and process-CPU seconds of one forward + backward (sum of the embedding), synchronised
    on GPU. CPU seconds are the steadier measure on a CPU shared with other jobs."""
    model.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
        loss = model(x, location).float().sum()
    loss.backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def time_round_robin(models: dict[str, nn.Module], x: torch.Tensor, locations: dict[str, torch.Tensor], repeats: dict[str, int],
                     warmup: int, amp: bool) -> dict[str, list[tuple[float, float]]]:
    """Interleave the formulations (one iteration each per round) so that load drift on a shared
    machine affects them alike; each is warmed up first (kernel selection, allocator)."""
    for name, model in models.items():
        for _ in range(warmup):
            forward_backward_seconds(model, x, locations[name], amp)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for round_index in range(max(repeats.values())):
        for name, model in models.items():
            if round_index < repeats[name]:
                seconds[name].append(forward_backward_seconds(model, x, locations[name], amp))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed iterations of the slow loop formulation")
    parser.add_argument("--amp", action="store_true", help="fp16 autocast (GPU)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    conditional = DrasclrEncoder(EncoderArchitecture(num_experts=args.experts)).to(device).train()
    models = {
        "cond_shared": conditional,
        "cond_grouped": conditional,
        "plain": replace_convs(conditional, plain_of).to(device),
        "loop": replace_convs(conditional, LoopConv3d).to(device),
    }
    x = torch.randn(args.batch, 1, args.patch, args.patch, args.patch, device=device)
    shared = torch.rand(3, device=device) * 2 - 1
    per_sample = torch.rand(args.batch, 3, device=device) * 2 - 1
    locations = {"cond_shared": shared, "cond_grouped": per_sample, "plain": shared, "loop": per_sample}
    repeats = {name: args.loop_repeats if name == "loop" else args.repeats for name in models}
    seconds = time_round_robin(models, x, locations, repeats, args.warmup, args.amp)
    timings: dict[str, dict[str, float]] = {}
    for name, values in seconds.items():
        wall, cpu = [v[0] for v in values], [v[1] for v in values]
        timings[name] = {"median_s": statistics.median(wall), "min_s": min(wall), "median_cpu_s": statistics.median(cpu),
                         "repeats": len(values)}
        print(f"{name:13s} {timings[name]['median_s'] * 1000:9.1f} ms wall, {timings[name]['median_cpu_s'] * 1000:9.1f} ms CPU "
              f"(median of {len(values)})", flush=True)
    median = {name: t["median_s"] for name, t in timings.items()}
    median_cpu = {name: t["median_cpu_s"] for name, t in timings.items()}
    result = {
        "benchmark": "encoder forward+backward",
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "patch": args.patch,
        "num_experts": args.experts,
        "amp": args.amp,
        "parameters": {"conditional": sum(p.numel() for p in conditional.parameters()),
                       "plain": sum(p.numel() for p in models["plain"].parameters())},
        "timings": timings,
        "cond_vs_plain_ratio": median["cond_shared"] / median["plain"],
        "grouped_vs_plain_ratio": median["cond_grouped"] / median["plain"],
        "loop_vs_cond_speedup": median["loop"] / median["cond_shared"],
        "loop_vs_grouped_speedup": median["loop"] / median["cond_grouped"],
        "goal_cond_vs_plain_ratio": GOAL_RATIO,
        "cpu_time_ratios": {"cond_vs_plain": median_cpu["cond_shared"] / median_cpu["plain"],
                            "grouped_vs_plain": median_cpu["cond_grouped"] / median_cpu["plain"],
                            "loop_vs_cond": median_cpu["loop"] / median_cpu["cond_shared"]},
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    write_json(args.out, result)
    print(f"cond/plain {result['cond_vs_plain_ratio']:.3f} (goal <= {GOAL_RATIO}), grouped/plain {result['grouped_vs_plain_ratio']:.3f}, "
          f"loop/cond {result['loop_vs_cond_speedup']:.1f}x, loop/grouped {result['loop_vs_grouped_speedup']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

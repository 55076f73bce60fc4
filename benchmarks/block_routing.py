"""Forward time of the segmentation network on inference windows, by how its encoder is routed.

The app predicts a scan in 64^3 windows (1 mm), each made of 2 x 2 x 2 landmark cells of 32^3
voxels; every cell is routed by its own atlas location at every depth of the encoder
(``CondConv3d`` with a location grid, ``(N, 3, 2, 2, 2)``). In one run, on the same random batch
(default two windows, as one pass of the app) and the same weights:

* ``blocks``: the app's formulation: the stem (one input channel, the CT) convolves block by
  block, deeper layers run one grouped convolution over all blocks;
* ``blocks_all_grouped``: every layer, the stem included, as one grouped convolution (the
  formulation before the stem went block by block): the baseline;
* ``one_location``: each window routed by one location, its own (the formulation before block
  routing: per layer one grouped convolution with one group per window): the floor.

The input is a random CT channel and atlas coordinates that run linearly across each window
(x along x, y along y, z along z, 0.4 of the atlas span per window, as on a scan's 1 mm grid);
``one_location`` takes each window's centre (the network without its routing block).

For float32 and, where the CPU has native bfloat16 (as the app picks it), bfloat16 autocast.
Reported: median and minimum seconds per forward pass over ``--repeats`` rounds (the three are
interleaved round by round, so load changes on a shared machine hit all alike) and the ratios
to ``blocks``.

    python benchmarks/block_routing.py --out benchmarks/results/block_routing_cpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

import drasclr_monailabel.models.condconv as condconv
from drasclr_monailabel.segmentation.checkpoint import build_model
from drasclr_monailabel.segmentation.inference import WINDOW, windows_per_pass
from drasclr_monailabel.segmentation.precision import network_precision, resolve_precision
from drasclr_monailabel.utils.atomic import write_json

FORMULATIONS = ("blocks", "blocks_all_grouped", "one_location")


def window_inputs(windows: int, device: str) -> torch.Tensor:
    """Network input ``(windows, 4, 64, 64, 64)``: the CT channel, then atlas coordinates across each window."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(windows, 1, WINDOW, WINDOW, WINDOW, generator=generator)
    centres = torch.rand(windows, 3, generator=generator) * 1.2 - 0.6
    ramp = torch.linspace(-0.2, 0.2, WINDOW)
    axes = torch.stack(torch.meshgrid(ramp, ramp, ramp, indexing="ij")[::-1])  # x, y, z along the x, y, z axes
    return torch.cat([image, centres[:, :, None, None, None] + axes[None]], 1).to(device)


def one_pass_seconds(model: torch.nn.Module, x: torch.Tensor, name: str, block_limit: int, routing_block: int) -> float:
    """One forward pass in formulation ``name`` (seconds)."""
    condconv.BLOCK_BY_BLOCK_MAX_IN_CHANNELS = 0 if name == "blocks_all_grouped" else block_limit
    model.routing_block = None if name == "one_location" else routing_block
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def measure(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, repeats: int, device: str) -> dict[str, Any]:
    limit, routing_block = condconv.BLOCK_BY_BLOCK_MAX_IN_CHANNELS, model.routing_block
    seconds: dict[str, list[float]] = {name: [] for name in FORMULATIONS}
    try:
        with torch.inference_mode(), network_precision(dtype, device):
            for name in FORMULATIONS:  # warm-up: oneDNN primitives, allocator
                one_pass_seconds(model, x, name, limit, routing_block)
            for _ in range(repeats):
                for name in FORMULATIONS:
                    seconds[name].append(one_pass_seconds(model, x, name, limit, routing_block))
    finally:
        condconv.BLOCK_BY_BLOCK_MAX_IN_CHANNELS, model.routing_block = limit, routing_block
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {"median_seconds": {k: round(v, 4) for k, v in median.items()},
            "min_seconds": {name: round(min(values), 4) for name, values in seconds.items()},
            "ratio_to_blocks": {name: round(median[name] / median["blocks"], 3) for name in FORMULATIONS}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--windows", type=int, default=windows_per_pass(WINDOW), help="64^3 windows per pass (default: the app's)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = parser.parse_args()
    if args.windows < 1 or args.repeats < 1:
        parser.error("--windows and --repeats must be at least 1")
    torch.manual_seed(0)
    model, _ = build_model(device=args.device)
    model.eval()
    if not model.routing_block:
        raise SystemExit("the default network has no routing block: nothing to compare")
    x = window_inputs(args.windows, args.device)
    precisions = {"float32": torch.float32}
    if resolve_precision("auto", args.device) == "bfloat16":
        precisions["bfloat16"] = torch.bfloat16
    results = {name: measure(model, x, dtype, args.repeats, args.device) for name, dtype in precisions.items()}
    for name, result in results.items():
        print(f"{name}: {result['median_seconds']} ratios {result['ratio_to_blocks']}", file=sys.stderr)
    write_json(args.out, {
        "benchmark": "block_routing",
        "command": f"python benchmarks/block_routing.py --out {args.out} --windows {args.windows} --repeats {args.repeats} --device {args.device}",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "windows": args.windows, "window": WINDOW, "precisions": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

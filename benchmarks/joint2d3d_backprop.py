"""Memory and time of the ways the 3D losses can reach the joint2d3d slice encoder (issue 19).

Options, for the stages with ``encoder_in_3d`` (``volume_backprop`` in the recipe):

* ``frozen``: the trunk runs on the volume views without gradient (the former recipes);
* ``all``: every slice of every view back-propagates;
* ``subset_K``: K random slices per view back-propagate (gradient scaled by S / K), the rest run
  without gradient;
* ``*_recompute``: activation checkpointing of the trunk by residual block;
* ``all_small``: every slice back-propagates but the views' slices are half the global crop edge
  (the "smaller slice size in the 3D stage" alternative; measured here only).

Each option runs one training step (forward of every loss, backward, SGD with momentum) in a fresh
process on the CPU in float32, one thread. Peak memory is the rise of the resident set over the
step (``VmHWM`` after resetting it, minus ``VmRSS`` before: activations and temporaries; the
gradients of the previous step are freed before backward, so they count once, in the baseline),
with glibc told to map every block of 64 KiB or more on its own (freed memory is returned).

* ``demo`` recipe: the real per-process batch (configs/joint2d3d_demo.yaml).
* ``full`` recipe (configs/joint2d3d.yaml: ResNet-50, 224 px, 64 samples, 4 volumes x 2 views x
  64 slices per process) does not fit a CPU step in reasonable time: the 2D part is measured with
  2 samples and the 3D part with 1 volume, each scaled linearly to the recipe's batch (activation
  memory is linear in the batch) and added to the weights, their gradients and momentum. That is
  float32: AMP on a GPU keeps most activations in float16 (about half; not measured, no GPU).

Usage:
  OMP_NUM_THREADS=1 python benchmarks/joint2d3d_backprop.py --out benchmarks/results/joint2d3d_backprop_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"demo": ROOT / "configs" / "joint2d3d_demo.yaml", "full": ROOT / "configs" / "joint2d3d.yaml"}
OPTIONS = {
    "frozen": {"encoder_in_3d": False, "slices": 0, "recompute": False},
    "all": {"encoder_in_3d": True, "slices": 0, "recompute": False},
    "subset_4": {"encoder_in_3d": True, "slices": 4, "recompute": False},
    "subset_8": {"encoder_in_3d": True, "slices": 8, "recompute": False},
    "subset_16": {"encoder_in_3d": True, "slices": 16, "recompute": False},
    "all_recompute": {"encoder_in_3d": True, "slices": 0, "recompute": True},
    "subset_16_recompute": {"encoder_in_3d": True, "slices": 16, "recompute": True},
    "all_small": {"encoder_in_3d": True, "slices": 0, "recompute": False, "small": True},
}
GIB = 2**30
GPU_MEMORY_GIB = 80


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="JSON result file")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["demo", "full"])
    parser.add_argument("--options", nargs="+", choices=sorted(OPTIONS), default=list(OPTIONS))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(**json.loads(args.measure))))
        return 0
    if args.out is None:
        parser.error("--out is required")
    result: dict = {"options": {name: OPTIONS[name] for name in args.options}, "recipes": {}}
    for recipe in args.recipes:
        result["recipes"][recipe] = run_recipe(recipe, args.options)
    result["command"] = " ".join(["python", "benchmarks/joint2d3d_backprop.py", *(argv if argv is not None else sys.argv[1:])])
    result["machine"] = {"device": "cpu", "processor": platform.processor() or platform.machine(), "threads": 1,
                         "torch": torch.__version__, "gpu": "none lent to this work"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def run_recipe(recipe: str, options: list[str]) -> dict:
    """Every option of one recipe: measured (demo) or measured in parts and scaled (full)."""
    from drasclr_monailabel.ssl.recipe import load_recipe

    config = load_recipe(RECIPES[recipe])
    batch, volumes = config.train.batch_size, config.data.volumes_per_batch
    rows: dict = {}
    if recipe == "demo":
        for name in options:
            rows[name] = child({"recipe": recipe, "option": name, "batch": batch, "volumes": volumes, "repeats": 7})
            print(f"{recipe} {name}: {rows[name]}", flush=True)
        return {"batch": batch, "volumes": volumes, "rows": rows}
    two_d = child({"recipe": recipe, "option": "frozen", "batch": 2, "volumes": 0, "repeats": 1})
    print(f"{recipe} 2D part (2 samples): {two_d}", flush=True)
    for name in options:
        part = child({"recipe": recipe, "option": name, "batch": 0, "volumes": 1, "repeats": 1})
        activations = two_d["peak_bytes"] * batch / 2 + part["peak_bytes"] * volumes
        total = activations + 3 * part["parameter_bytes"]  # weights, gradients, momentum
        rows[name] = {"volume_part": part, "estimated_step_bytes_fp32": total, "estimated_step_gib_fp32": round(total / GIB, 1),
                      "fits_80_gib_fp32": total < GPU_MEMORY_GIB * GIB,
                      "estimated_step_seconds_cpu": round(two_d["seconds"] * batch / 2 + part["seconds"] * volumes, 1)}
        print(f"{recipe} {name}: {rows[name]}", flush=True)
    return {"batch": batch, "volumes": volumes, "two_d_part": two_d, "rows": rows}


# glibc keeps freed blocks for reuse and raises its mmap threshold as blocks are freed, so the
# resident set would hide a step's activations behind memory the warm-up step freed. A fixed,
# low threshold gives every tensor its own mapping, returned when it is freed.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def child(spec: dict) -> dict:
    """One measurement in a fresh process (a clean resident-set baseline)."""
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True, check=True,
                          env={**os.environ, **MALLOC_ENV})
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(recipe: str, option: str, batch: int, volumes: int, repeats: int) -> dict:
    """One warm-up step, then ``repeats`` measured steps: median peak resident-set rise (bytes)
    and median CPU seconds."""
    from drasclr_monailabel.ssl.recipe import load_recipe

    torch.set_num_threads(1)
    torch.manual_seed(0)
    settings = OPTIONS[option]
    config = load_recipe(RECIPES[recipe])
    network = build_network(config)
    inputs = synthetic_inputs(config, batch, volumes, settings)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    train_step(network, optimizer, inputs, config, settings)  # allocates momentum buffers
    peaks, times = [], []
    for _ in range(repeats):
        _reset_peak()
        before = _status("VmRSS")
        clock = time.process_time()
        train_step(network, optimizer, inputs, config, settings)
        times.append(time.process_time() - clock)
        peaks.append(_status("VmHWM") - before)
    parameters = sum(p.numel() * p.element_size() for p in network.parameters())
    return {"peak_bytes": int(np.median(peaks)), "seconds": round(float(np.median(times)), 3), "parameter_bytes": parameters,
            "backprop_slices": int(inputs["backprop"].sum()) if "backprop" in inputs else None}


def build_network(config):
    from drasclr_monailabel.ssl.joint2d3d.network import Joint2d3dNetwork

    model, clustering = config.model, config.clustering
    return Joint2d3dNetwork(model.slice_encoder, model.transformer, model.projection_hidden, model.projection_dim,
                            clustering.slice_prototypes, clustering.volume_prototypes, clustering.heads, learned_prototypes=True).train()


def synthetic_inputs(config, batch: int, volumes: int, settings: dict) -> dict:
    """Random network inputs of the recipe's shapes (``batch`` 2D samples, ``volumes`` volumes)."""
    from drasclr_monailabel.ssl.joint2d3d.method import random_subset_mask

    crops, s = config.crops, config.model.num_slices
    generator = torch.Generator().manual_seed(0)
    inputs: dict = {"batch_size": batch, "global_crops": crops.global_crops}
    if batch:
        inputs["crops"] = [torch.randn(crops.global_crops * batch, 1, crops.global_size, crops.global_size),
                           torch.randn(crops.local_crops * batch, 1, crops.local_size, crops.local_size)]
    if volumes:
        size = crops.global_size // 2 if settings.get("small") else crops.global_size
        inputs.update(views=torch.randn(2 * volumes * s, 1, size, size), positions=torch.linspace(-1, 1, s).repeat(2 * volumes, 1),
                      kinds=torch.zeros(2 * volumes, dtype=torch.int64),
                      mask=random_subset_mask(2 * volumes, s, max(1, round(config.masking.ratio * s)), generator, torch.device("cpu")))
        if settings["encoder_in_3d"] and 0 < settings["slices"] < s:
            inputs["backprop"] = random_subset_mask(2 * volumes, s, settings["slices"], generator, torch.device("cpu")).reshape(-1)
    return inputs


def train_step(network, optimizer, inputs: dict, config, settings: dict) -> None:
    """Forward of every loss the inputs allow (SwAV on both levels, masked prediction), backward, SGD."""
    from drasclr_monailabel.ssl.joint2d3d.losses import masked_prediction_loss, swapped_prediction_loss, swav_codes
    from drasclr_monailabel.ssl.joint2d3d.network import StepPlan

    c = config.clustering
    has_views = "views" in inputs
    plan = StepPlan(intra="crops" in inputs, inter=has_views, masked=has_views, encoder_in_3d=settings["encoder_in_3d"],
                    freeze_prototypes=False, recompute=settings["recompute"])
    out = network(inputs, plan)
    loss = torch.zeros(())

    def swav(scores: list[torch.Tensor], code_crops: int) -> torch.Tensor:
        codes = [swav_codes(scores[i], c.sinkhorn_epsilon, c.sinkhorn_iterations) for i in range(code_crops)]
        return swapped_prediction_loss(scores, codes, c.temperature)

    if plan.intra:
        loss = loss + swav(out["slice_scores"][0], config.crops.global_crops)
    if has_views:
        loss = loss + swav(out["volume_scores"][0], 2) + masked_prediction_loss(out["predicted"], out["target"], inputs["mask"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident set (Linux: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of the joint image-volume method, stage by stage, against baselines run alongside.

Measured per recipe (default: the demo recipe) on the chosen device, on thorax phantoms (or
``--volumes DIR``), with data already read (the reading cost is reported on its own):

* 2D stage (L_intra): training steps per second, 2D samples/s and crop images/s; baseline: the
  bare slice encoder's forward + backward on the same crops (ratio = method overhead: multi-crop
  augmentation, heads, Sinkhorn);
* 3D stage (masked prediction + L_inter, trunk without gradient as in the full recipe): volume
  views/s; baseline: the trunk alone on the same slices;
* joint step (all three losses) steps/s;
* embedding (inference): volumes/s through ``JointEmbedder.volume`` and slices/s;
* deformable attention vs dense multi-head attention over S slice tokens (forward + backward).

    python benchmarks/joint2d3d_throughput.py --out benchmarks/results/joint2d3d_throughput_cpu.json
    python benchmarks/joint2d3d_throughput.py --config configs/joint2d3d.yaml --device cuda --out ...
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from drasclr_monailabel.data.phantom import make_thorax_phantom
from drasclr_monailabel.models.deformable_attention import DeformableAttention1d
from drasclr_monailabel.ssl.distributed import DistContext
from drasclr_monailabel.ssl.joint2d3d.embed import JointEmbedder
from drasclr_monailabel.ssl.joint2d3d.method import Joint2d3dMethod
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.utils.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]


def write_phantoms(folder: Path, count: int) -> Path:
    for seed in range(count):
        case = make_thorax_phantom(spacing=(2.0, 2.0, 2.5), seed=seed)
        sitk.WriteImage(case.volume.to_sitk(), str(folder / f"phantom{seed}.nii.gz"))
    return folder


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    times = []
    for index in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class StageRunner:
    """One optimiser step of ``method`` on a fixed batch, with a given schedule stage."""

    def __init__(self, method: Joint2d3dMethod, batch: dict, device: torch.device, amp: bool) -> None:
        self.method, self.batch, self.device = method, batch, device
        self.network = method.network
        self.optimizer = torch.optim.SGD([p for p in self.network.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.amp = amp

    def step(self) -> None:
        inputs = self.method.prepare_batch(self.batch, self.generator)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            output = self.method.training_step(self.network, inputs, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        self.optimizer.step()
        self.method.after_step(self.method.step)


def build_method(config_path: Path, overrides: list[str], volumes: Path, stack_dir: Path, device: torch.device) -> Joint2d3dMethod:
    config = load_recipe(config_path, [f"data.stack_dir={stack_dir}", f"train.device={device.type}", *overrides])
    context = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    torch.manual_seed(0)
    return Joint2d3dMethod(config, context, volumes)


def with_stage(method: Joint2d3dMethod, intra: float, masked: float, inter: float) -> None:
    stage = method.config.schedule[-1]
    method.config.schedule = [type(stage)(until=1.0, intra=intra, masked=masked, inter=inter, encoder_in_3d=stage.encoder_in_3d)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "joint2d3d_demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--volumes", type=Path, help="folder/manifest/cache of volumes (default: 4 thorax phantoms)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    result: dict[str, object] = {"config": str(args.config), "overrides": args.overrides, "device": args.device,
                                 "torch_threads": torch.get_num_threads(),
                                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    with tempfile.TemporaryDirectory() as tmp:
        volumes = args.volumes or write_phantoms(Path(tmp), 4)
        method = build_method(args.config, args.overrides, volumes, Path(tmp) / "stacks", device)
        config = method.config
        amp = device.type == "cuda" and config.train.amp != "off"
        dataset, sampler = method.build_data()
        with_stage(method, 1.0, 1.0, 1.0)
        key = sampler.rank_keys(0)[0]
        dataset[key]  # builds the stacks once (not timed)
        result["read_batch_s"] = timed(lambda: dataset[key], torch.device("cpu"), args.repeats, 1)
        batch = {name: value.to(device) for name, value in dataset[key].items()}
        b, v, s = batch["items"].shape[0], batch["views"].shape[0], config.model.num_slices
        crops_per_sample = config.crops.global_crops + config.crops.local_crops
        runner = StageRunner(method, batch, device, amp)
        method.network.train()

        with_stage(method, 1.0, 0.0, 0.0)
        step_2d = timed(runner.step, device, args.repeats, args.warmup)
        glob, local = method.augmenter.multi_crop(batch["items"], batch["item_ids"] >= 0, runner.generator)
        trunk = method.network.encoder.slices

        def bare_2d() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = sum(trunk.stage_pools(crops)[-1].float().sum() for crops in ([glob, local] if local is not None else [glob]))
            loss.backward()

        base_2d = timed(bare_2d, device, args.repeats, args.warmup)
        result["stage_2d"] = {"step_s": step_2d, "samples_per_s": b / step_2d, "crop_images_per_s": b * crops_per_sample / step_2d,
                              "baseline_encoder_s": base_2d, "overhead_ratio": step_2d / base_2d}

        with_stage(method, 0.0, 1.0, 1.0)
        step_3d = timed(runner.step, device, args.repeats, args.warmup)
        views = method.augmenter.volume_views(batch["views"], False, runner.generator)

        @torch.no_grad()
        def bare_3d() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                trunk.multi_scale(views)

        base_3d = timed(bare_3d, device, args.repeats, args.warmup)
        result["stage_3d"] = {"step_s": step_3d, "volumes_per_s": v / step_3d, "views_per_s": 2 * v / step_3d,
                              "slices_per_s": 2 * v * s / step_3d, "encoder_in_3d": config.schedule[-1].encoder_in_3d,
                              "baseline_trunk_s": base_3d, "overhead_ratio": step_3d / base_3d}

        with_stage(method, 1.0, 1.0, 1.0)
        step_joint = timed(runner.step, device, args.repeats, args.warmup)
        result["joint"] = {"step_s": step_joint, "steps_per_s": 1 / step_joint, "samples_per_s": b / step_joint, "volumes_per_s": v / step_joint}

        method.network.eval()
        embedder = JointEmbedder(method.network.encoder, method.export_spec().metadata, device)
        stack = dataset.stack(0)
        embed_s = timed(lambda: embedder.volume(stack), device, args.repeats, 1)
        result["embedding"] = {"volume_s": embed_s, "volumes_per_s": 1 / embed_s, "slices_per_s": s / embed_s}

        dim, heads = config.model.slice_encoder.embedding_dim, config.model.transformer.heads
        tokens = torch.randn(8, s, dim, device=device, requires_grad=True)
        deformable = DeformableAttention1d(dim, heads, config.model.transformer.points).to(device)
        dense = torch.nn.MultiheadAttention(dim, heads, batch_first=True).to(device)
        deform_s = timed(lambda: deformable(tokens).sum().backward(), device, args.repeats, args.warmup)
        dense_s = timed(lambda: dense(tokens, tokens, tokens, need_weights=False)[0].sum().backward(), device, args.repeats, args.warmup)
        result["attention"] = {"tokens": s, "dim": dim, "batch": 8, "deformable_s": deform_s, "dense_s": dense_s,
                               "deformable_over_dense": deform_s / dense_s}
    result["batch"] = {"samples_2d": b, "volumes": v, "slices_per_view": s, "crops_per_sample": crops_per_sample}
    write_json(args.out, result)
    print({k: (round(val, 4) if isinstance(val, float) else val) for k, val in result.items() if not isinstance(val, dict)})
    for name, block in result.items():
        if isinstance(block, dict):
            print(name, {k: round(val, 4) if isinstance(val, float) else val for k, val in block.items()})


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

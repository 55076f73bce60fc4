"""Pretrain an encoder with self-supervision on a preprocessing cache.

The recipe (YAML) names the method (default drasclr); every key can be overridden with
--set section.key=value. One process uses the CPU or one GPU; for several GPUs or machines start
the same command with torchrun (see pretrain/ and docs/pretraining.md).

Writes into RUN_DIR: config.yaml, checkpoints/last.pt (every train.checkpoint_every steps and when
stopped with Ctrl-C or SIGTERM, exit status 130), progress.json, checkpoints/final.pt,
tensorboard/, plan.json (what the run will do, e.g. how full the negative queues get), and at the
end the exported encoder (encoder.pt + encoder.json). --plan prints that plan and trains nothing.

--config takes a YAML file or the name of a recipe shipped with the package (drasclr_demo,
drasclr, joint2d3d_demo, joint2d3d; the files are configs/ in the repository).

Examples:
  drasclr pretrain --config drasclr_demo --cache cache/ --out runs/demo
  drasclr pretrain --config my_recipe.yaml --cache cache/ --out runs/mine
  drasclr pretrain --config configs/drasclr.yaml --cache cache/ --out runs/full --set optim.lr=0.02
  drasclr pretrain --config configs/drasclr.yaml --cache cache/ --out runs/full --resume
  drasclr pretrain --config configs/drasclr.yaml --cache cache/ --out runs/full --plan
  torchrun --nproc_per_node 4 -m drasclr_monailabel.cli.main pretrain --config configs/drasclr.yaml ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "pretrain"
HELP = "self-supervised pretraining (DrasCLR) on a preprocessing cache; exports encoder.pt + encoder.json"
EXIT_STOPPED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="recipe YAML file or shipped recipe name, e.g. drasclr_demo "
                        "(default: the method's built-in defaults)")
    parser.add_argument("--method", help="pretraining method when the recipe does not name one: drasclr (default) or joint2d3d")
    parser.add_argument("--cache", type=Path, required=True, help="data: the preprocessing cache folder ('drasclr preprocess --out'); "
                        "joint2d3d also takes a folder or manifest of volumes")
    parser.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, logs and the exported encoder")
    parser.add_argument("--atlas", type=Path, help="atlas folder the cache was registered to (default: data.atlas, else the package atlas)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    parser.add_argument("--plan", action="store_true", help="print what the run would do (steps, queue fill, warnings) "
                        "as JSON and exit without training")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.02 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.ssl.recipe import load_recipe
    from drasclr_monailabel.ssl.trainer import plan_pretraining, run_pretraining

    overrides = list(args.overrides) + ([f"data.atlas={args.atlas}"] if args.atlas else [])
    config = load_recipe(args.config, overrides, method=args.method)
    if args.plan:
        print(json.dumps(plan_pretraining(config, args.cache), indent=2))
        return 0
    result = run_pretraining(config, args.cache, args.out, resume=args.resume)
    if not result.completed:
        print(f"stopped at step {result.step} of {result.total_steps}; continue with --resume")
        return EXIT_STOPPED
    if result.export_dir is not None:
        print(f"encoder exported to {result.export_dir / 'encoder.pt'} and {result.export_dir / 'encoder.json'}")
    return 0

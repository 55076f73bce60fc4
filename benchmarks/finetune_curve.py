"""Does a fine-tuning recipe learn the task at all? One scratch fine-tuning on a label-efficiency
fold, its loss per epoch, and what the model predicts on training and held-out test scans.

Why: a label-efficiency grid whose every arm scores Dice 0 cannot rank the arms; before spending a
grid on a budget or a recipe, this checks that the recipe moves the network off "all background".
It reuses the fold folder ``benchmarks/label_efficiency.py`` makes (``--workdir``/fold_A with
``train/`` and ``test/``), the same case preparation, patch sampler, loss and 64^3 inference.

Reported per scan (the central ``--slab`` slices through the lungs, 1 mm grid): the share of lung
voxels of each class in the truth and in the prediction, the binary Dice (emphysema vs not) and
each class's Dice, for two decodings of the same probabilities: the arg-max over all classes, and
the app's emphysema-first decoding (``class_labels``: emphysema where P(background) < 0.5, then the
most probable subtype; a model unsure which subtype a lesion is splits its probability between
subtypes and the arg-max then picks background).
Baseline in the same run: the plain HU < -950 threshold's binary Dice on the same voxels, and the
loss of the best constant prediction (each voxel given the class frequencies of the training
patches), which a model that learnt nothing about the image reaches.

Usage:
  python benchmarks/label_efficiency.py --size full --folds A --arms scratch --tasks subtypes --counts 8 --seeds 0 \
      --workdir /tmp/le/work --out /tmp/le/scratch8.json      # makes /tmp/le/work/fold_A
  python benchmarks/finetune_curve.py --fold-dir /tmp/le/work/fold_A --task subtypes --epochs 16 --lr 0.003 \
      --out benchmarks/results/finetune_curve_subtypes_lr3e-3.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import (  # noqa: E402
    SIZES,
    TASKS,
    central_slab,
    fine_tuned_model,
    finetune_config,
    for_task,
    labelled_subset,
    prepare_cohort,
)

from drasclr_monailabel.data.synth_cohort import threshold_dice  # noqa: E402
from drasclr_monailabel.metrics import dice  # noqa: E402
from drasclr_monailabel.segmentation.inference import WINDOW, class_labels, window_probabilities  # noqa: E402
from drasclr_monailabel.segmentation.case import PreparedCase  # noqa: E402
from drasclr_monailabel.segmentation.training import PatchCentres, patch_batch, segmentation_loss  # noqa: E402
from drasclr_monailabel.utils.atomic import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold-dir", type=Path, required=True, help="a label-efficiency fold folder (train/ and test/)")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--task", choices=sorted(TASKS), default="subtypes", help="label set (default subtypes)")
    parser.add_argument("--count", type=int, default=8, help="labelled training scans (default 8)")
    parser.add_argument("--epochs", type=int, default=16, help="epochs of 25 steps, batch 4 (default 16)")
    parser.add_argument("--lr", type=float, default=None, help="decoder learning rate (default: the app's)")
    parser.add_argument("--foreground-fraction", type=float, default=None,
                        help="share of patches centred on labelled emphysema (default: the app's)")
    parser.add_argument("--seed", type=int, default=0, help="seed: scans picked, patches, initialisation (default 0)")
    parser.add_argument("--slab", type=int, default=64, help="central axial slices scored per scan (default 64)")
    parser.add_argument("--test-scans", type=int, default=2, help="held-out test scans scored (default 2)")
    args = parser.parse_args(argv)
    for name in ("count", "epochs", "slab", "test_scans"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for part in ("train", "test"):
        if not (args.fold_dir / part / "manifest.csv").is_file():
            parser.error(f"{args.fold_dir / part / 'manifest.csv'}: not found; make the fold with benchmarks/label_efficiency.py")
    started = time.perf_counter()
    labels = TASKS[args.task]
    train = for_task(prepare_cohort(args.fold_dir / "train"), labels)
    test = for_task([central_slab(c, args.slab) for c in prepare_cohort(args.fold_dir / "test")[:args.test_scans]], labels)
    if args.count > len(train):
        parser.error(f"--count {args.count} is more than the {len(train)} training scans in {args.fold_dir / 'train'}")
    config = finetune_config(replace(SIZES["full"], finetune_epochs=args.epochs), "cpu", args.seed, count=args.count)
    overrides = {k: v for k, v in (("lr", args.lr), ("foreground_fraction", args.foreground_fraction)) if v is not None}
    config = replace(config, **overrides)
    model, stats = fine_tuned_model("scratch", None, train, args.count, config, labels=labels)
    classes = len(labels) + 1
    result = {
        "task": args.task,
        "config": asdict(config),
        "loss_per_epoch": stats["loss"],
        "constant_prediction_loss": constant_prediction_loss(train, config, classes),
        "fine_tune_seconds": stats["seconds"],
        "train": [scored(model, central_slab(case, args.slab), classes) for case in labelled_subset(train, args.count, args.seed)[:1]],
        "test": [scored(model, case, classes) for case in test],
        "command": " ".join(["python", "benchmarks/finetune_curve.py", *(argv if argv is not None else sys.argv[1:])]),
        "device_name": platform.processor(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, result)
    print(f"loss per epoch {[round(v, 3) for v in stats['loss']]} (constant prediction {result['constant_prediction_loss']:.3f})")
    for part in ("train", "test"):
        for row in result[part]:
            print(f"{part} {row['case']}: true class shares {row['true_share']}; threshold binary Dice {row['threshold_dice']:.3f}")
            for name in ("argmax", "emphysema_first"):
                block = row[name]
                print(f"  {name:>15}: predicted shares {block['predicted_share']}, binary Dice {block['binary_dice']:.3f}, "
                      f"class Dice {[round(v, 3) for v in block['class_dice']]}")
    return 0


def scored(model: torch.nn.Module, case: PreparedCase, classes: int) -> dict:
    """Class shares of the lung (truth and prediction), binary Dice and per-class Dice of ``model``
    on ``case``, for two decodings: the arg-max over all classes, and emphysema first (emphysema
    where the background probability is below 0.5, then the most probable subtype)."""
    probabilities = window_probabilities(model, case, "cpu", mc_dropout=False, window=WINDOW, overlap=0.0, batch_size=None)
    lung = case.lungs > 0

    def shares(labels: np.ndarray) -> list[float]:
        return [round(float(np.mean(labels[lung] == k)), 5) for k in range(classes)]

    decoded = {"argmax": np.argmax(probabilities, axis=0),
               "emphysema_first": class_labels(probabilities)}
    row = {"case": case.case_id, "true_share": shares(case.labels),
           "threshold_dice": float(threshold_dice(case.scan.image, case.lungs, case.labels))}
    for name, predicted in decoded.items():
        row[name] = {"predicted_share": shares(predicted), "binary_dice": float(dice(predicted > 0, case.labels > 0)),
                     "class_dice": [float(dice(predicted == k, case.labels == k)) for k in range(1, classes)]}
    return row


def constant_prediction_loss(cases: list[PreparedCase], config, classes: int, patches: int = 400) -> float:
    """The fine-tuning loss (cross-entropy + 1 - soft foreground Dice) of predicting, everywhere, the
    class frequencies of ``patches`` training patches drawn as fine-tuning draws them."""
    generator = np.random.default_rng(config.seed + 1)
    samplers = [PatchCentres(case, config.patch_size) for case in cases]
    targets = torch.cat([patch_batch(cases, samplers, config, generator)[1] for _ in range(patches // config.batch_size)])
    frequencies = torch.bincount(targets.flatten(), minlength=classes).double() / targets.numel()
    losses = []
    for batch in targets.split(config.batch_size):
        logits = frequencies.clamp_min(1e-8).log().float().view(1, classes, 1, 1, 1).expand(len(batch), classes, *batch.shape[1:])
        losses.append(float(segmentation_loss(logits, batch, classes)))
    return float(np.mean(losses))


if __name__ == "__main__":
    raise SystemExit(main())

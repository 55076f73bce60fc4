"""Cross-validated linear probes of patient embeddings against phenotypes (docs/embeddings.md).

Tasks: regression (ridge; R^2 and Pearson r), classification (logistic, binary or categorical;
ROC AUC, one-vs-rest macro for more than two classes, and accuracy) and survival (L2-penalised Cox model; Harrell's C-index; --target names the event
column, --time the follow-up column). Without --task, a 0/1 column or a column with text (e.g. the
manifest's subtype) is a classification target and any other a regression target. Features are standardised inside each training fold; the penalty
is chosen by an inner cross-validation on that fold; outer folds are seeded (stratified by class or
event). Results: mean ± standard deviation over the outer folds and the pooled out-of-fold value.

--phenotypes is a CSV with an 'id' column holding the embedded ids (the synthetic cohort's
manifest.csv works as is: severity, laa950, survival_time, event). Ids without a row, or a
missing column, are refused.

Output in --out: probe.json, predictions.csv (out-of-fold predictions) and <target>.png
(predicted vs true, ROC curve, or Kaplan-Meier curves of the low- and high-risk halves).

Examples:
  drasclr probe --embeddings emb/ --phenotypes cohort/manifest.csv --target severity laa950 --out probe/
  drasclr probe --embeddings emb/embeddings.npz --phenotypes cohort/manifest.csv --target event --task survival --out surv/
  drasclr probe --embeddings emb/ --phenotypes clinical.csv --id-column patient --target copd --folds 10 --out copd/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drasclr_monailabel.cli.arguments import whole_number

NAME = "probe"
HELP = "cross-validated ridge / logistic / Cox probes of embeddings against phenotypes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", type=Path, required=True,
                        help="'drasclr embed' output folder, or an .npz with 'ids' (N,) and 'embeddings' (N, D)")
    parser.add_argument("--phenotypes", type=Path, required=True, help="CSV with an id column and the target columns")
    parser.add_argument("--target", nargs="+", required=True, help="phenotype column(s) to predict (survival: the event column)")
    parser.add_argument("--task", choices=["regression", "classification", "survival"],
                        help="task for every target (default: classification for 0/1 columns, else regression)")
    parser.add_argument("--time", default="survival_time", help="survival: follow-up time column (default survival_time)")
    parser.add_argument("--id-column", default="id", help="id column of --phenotypes (default id)")
    parser.add_argument("--folds", type=whole_number(2), default=5, help="outer cross-validation folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    from drasclr_monailabel.probe.run import run_probe

    report = run_probe(args.embeddings, args.phenotypes, list(dict.fromkeys(args.target)), args.out, task=args.task,
                       folds=args.folds, seed=args.seed, id_column=args.id_column, time_column=args.time)
    for name, block in report["targets"].items():
        shown = "   ".join(f"{metric} {value['mean']:.3f} ± {value['std']:.3f}" for metric, value in block["metrics"].items())
        pooled = ", ".join(f"{metric} {value:.3f}" for metric, value in block["pooled"].items())
        print(f"{name} ({block['task']}, n={block['n']}): {shown}   (pooled out-of-fold: {pooled})")
    print(f"probe: results in {args.out / 'probe.json'}")
    return 0

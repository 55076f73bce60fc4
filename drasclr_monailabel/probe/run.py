"""``drasclr probe``: cross-validated probes of patient embeddings against phenotypes.

For each target: drop subjects whose value is missing, make seeded outer folds (stratified by
class or by event for classification and survival), run the probe of its task, and write
``probe.json`` (metrics per fold, mean and standard deviation, pooled out-of-fold metrics),
``predictions.csv`` (the out-of-fold prediction of every subject) and ``<target>.png``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

import drasclr_monailabel
from drasclr_monailabel.embed.store import load_embeddings
from drasclr_monailabel.errors import ConfigError, InputError
from drasclr_monailabel.probe.phenotypes import read_phenotypes
from drasclr_monailabel.probe.plots import (
    classification_plot,
    regression_plot,
    survival_plot,
)
from drasclr_monailabel.probe.probes import (
    ProbeResult,
    cox_probe,
    logistic_probe,
    make_splits,
    ridge_probe,
)
from drasclr_monailabel.utils.atomic import write_json, write_text

PROBE_FORMAT = "drasclr-probe/1"
TASKS = ("regression", "classification", "survival")


def infer_task(values: np.ndarray) -> str:
    """``classification`` for values that are all 0 or 1, else ``regression`` (survival is never guessed)."""
    finite = values[np.isfinite(values)]
    return "classification" if finite.size and np.isin(finite, (0.0, 1.0)).all() else "regression"


def probe_target(features: np.ndarray, target: np.ndarray, task: str, folds: int, seed: int, name: str,
                 time: np.ndarray | None = None) -> tuple[ProbeResult, np.ndarray]:
    """Run one probe on the subjects with a value; returns the result and their row numbers.

    Raises:
        ConfigError: too few subjects, classes or events for ``folds``.
    """
    keep = np.isfinite(target) & (np.isfinite(time) if time is not None else True)
    rows = np.flatnonzero(keep)
    x, y = features[rows], target[rows]
    if task in ("classification", "survival") and not np.isin(y, (0.0, 1.0)).all():
        what = "class labels" if task == "classification" else "event indicators"
        raise ConfigError(f"--target {name}", f"{task} needs {what} 0 / 1, found values such as {sorted(set(y.tolist()) - {0.0, 1.0})[:3]}")
    _check_counts(name, task, y, folds)
    splits = make_splits(len(y), folds, seed, strata=y.astype(int) if task != "regression" else None)
    if task == "regression":
        return ridge_probe(x, y, splits), rows
    if task == "classification":
        return logistic_probe(x, y, splits), rows
    if np.any(time[rows] <= 0):
        raise ConfigError(f"--target {name}", "survival times must be positive")
    return cox_probe(x, time[rows], y, splits), rows


def _check_counts(name: str, task: str, y: np.ndarray, folds: int) -> None:
    """Every outer fold needs two subjects (regression), one of each class, or one event."""
    if task == "regression" and len(y) < 2 * folds:
        raise ConfigError(f"--target {name}", f"has {len(y)} subjects with a value; --folds {folds} needs at least {2 * folds}")
    if task == "classification" and min(int(np.sum(y == 0)), int(np.sum(y == 1))) < folds:
        raise ConfigError(f"--target {name}", f"has {int(np.sum(y == 0))} subjects of class 0 and {int(np.sum(y == 1))} of class 1; "
                                f"--folds {folds} needs at least {folds} of each")
    if task == "survival" and int(y.sum()) < folds:
        raise ConfigError(f"--target {name}", f"has {int(y.sum())} events; --folds {folds} needs at least {folds}")


def run_probe(embeddings: str | Path, phenotypes: str | Path, targets: list[str], out_dir: str | Path, task: str | None = None,
              folds: int = 5, seed: int = 0, id_column: str = "id", time_column: str = "survival_time") -> dict[str, Any]:
    """Probe every target and write ``probe.json``, ``predictions.csv`` and one PNG per target in ``out_dir``.

    Returns the content of ``probe.json``.
    """
    if task is not None and task not in TASKS:
        raise ConfigError("--task", f"unknown task {task!r} ({', '.join(TASKS)})")
    if folds < 2:
        raise ConfigError("--folds", f"needs at least 2 folds, got {folds}")
    ids, features, metadata = load_embeddings(embeddings)
    if not np.isfinite(features).all():
        raise InputError(embeddings, "holds NaN or infinite patient embeddings")
    columns = list(dict.fromkeys(targets + ([time_column] if task == "survival" else [])))
    table = read_phenotypes(phenotypes, ids, columns, id_column)
    out_dir = Path(out_dir)
    report: dict[str, Any] = {
        "format": PROBE_FORMAT, "embeddings": str(Path(embeddings).resolve()), "phenotypes": str(Path(phenotypes).resolve()),
        "n_embeddings": len(ids), "embedding_dim": int(features.shape[1]), "folds": folds, "seed": seed,
        "embedding": {key: metadata[key] for key in ("method", "pooling", "encoder") if key in metadata},
        "targets": {}, "package_version": drasclr_monailabel.__version__,
    }
    if "encoder" in report["embedding"]:
        report["embedding"]["encoder"] = {k: v for k, v in report["embedding"]["encoder"].items() if k != "training"}
    predictions = io.StringIO()
    writer = csv.writer(predictions, lineterminator="\n")
    writer.writerow(["id", "target", "task", "fold", "true", "predicted"])
    for name in targets:
        target_task = task or infer_task(table[name])
        time = table[time_column] if target_task == "survival" else None
        result, rows = probe_target(features, table[name], target_task, folds, seed, name, time)
        truth = table[name][rows]
        plot = out_dir / f"{name}.png"
        if target_task == "regression":
            regression_plot(plot, name, truth, result)
        elif target_task == "classification":
            classification_plot(plot, name, truth, result)
        else:
            survival_plot(plot, name, time[rows], truth, result)
        report["targets"][name] = {**result.summary(), "plot": plot.name, **({"time_column": time_column} if time is not None else {})}
        for row, fold, value, predicted in zip(rows, result.fold_of, truth, result.predictions):
            writer.writerow([ids[row], name, target_task, int(fold), f"{value:g}", f"{predicted:.6g}"])
    write_text(out_dir / "predictions.csv", predictions.getvalue())
    write_json(out_dir / "probe.json", report)
    return report

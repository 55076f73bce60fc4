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
from drasclr_monailabel.probe.phenotypes import (
    as_numbers,
    is_numeric,
    read_phenotype_text,
)
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
    """``classification`` for numbers that are all 0 or 1, else ``regression`` (survival is never
    guessed; a column with text is always classification, see :func:`class_names`)."""
    finite = values[np.isfinite(values)]
    return "classification" if finite.size and np.isin(finite, (0.0, 1.0)).all() else "regression"


def class_names(cells: np.ndarray) -> list[str]:
    """The distinct non-empty values of a class column, numbers in numeric order (so 0 / 1 stays 0 / 1), else sorted."""
    names = sorted({cell for cell in cells if cell})
    return sorted(names, key=float) if is_numeric(np.array(names, dtype=object)) else names


def encode_classes(cells: np.ndarray, names: list[str]) -> np.ndarray:
    """float64 (N,) class index of each cell in ``names``, NaN where empty."""
    index = {name: k for k, name in enumerate(names)}
    return np.array([index[cell] if cell else np.nan for cell in cells], dtype=np.float64)


def probe_target(features: np.ndarray, target: np.ndarray, task: str, folds: int, seed: int, name: str,
                 time: np.ndarray | None = None, classes: list[str] | None = None) -> tuple[ProbeResult, np.ndarray]:
    """Run one probe on the subjects with a value; returns the result and their row numbers.

    ``target`` is float (N,) with NaN where missing (classification: class indices; survival: the
    event 0 / 1, with ``time``); ``classes`` names the class indices in error messages.

    Raises:
        ConfigError: too few subjects, classes or events for ``folds``.
    """
    keep = np.isfinite(target) & (np.isfinite(time) if time is not None else True)
    rows = np.flatnonzero(keep)
    x, y = features[rows], target[rows]
    if task == "survival" and not np.isin(y, (0.0, 1.0)).all():
        raise ConfigError(f"--target {name}", f"survival needs event indicators 0 / 1, found values such as {sorted(set(y.tolist()) - {0.0, 1.0})[:3]}")
    _check_counts(name, task, y, folds, classes)
    splits = make_splits(len(y), folds, seed, strata=y.astype(int) if task != "regression" else None)
    if task == "regression":
        return ridge_probe(x, y, splits), rows
    if task == "classification":
        return logistic_probe(x, y, splits), rows
    if np.any(time[rows] <= 0):
        raise ConfigError(f"--target {name}", "survival times must be positive")
    return cox_probe(x, time[rows], y, splits), rows


def _check_counts(name: str, task: str, y: np.ndarray, folds: int, classes: list[str] | None = None) -> None:
    """Every outer fold needs two subjects (regression), one of each class, or one event."""
    if task == "regression" and len(y) < 2 * folds:
        raise ConfigError(f"--target {name}", f"has {len(y)} subjects with a value; --folds {folds} needs at least {2 * folds}")
    counts = np.bincount(y.astype(int)) if task == "classification" else np.zeros(0)
    if task == "classification" and (len(counts) < 2 or counts.min() < folds):
        shown = ", ".join(f"{int(c)} of class {classes[k] if classes else k}" for k, c in enumerate(counts))
        raise ConfigError(f"--target {name}", f"has {shown}; --folds {folds} needs at least two classes and {folds} of each")
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
    text = read_phenotype_text(phenotypes, ids, columns, id_column)
    classes = {name: class_names(text[name]) for name in targets if task == "classification" or not is_numeric(text[name])}
    table = {name: encode_classes(cells, classes[name]) if name in classes else as_numbers(phenotypes, name, ids, cells)
             for name, cells in text.items()}
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
        target_task = "classification" if name in classes else task or infer_task(table[name])
        time = table[time_column] if target_task == "survival" else None
        result, rows = probe_target(features, table[name], target_task, folds, seed, name, time, classes.get(name))
        truth = table[name][rows]
        plot = out_dir / f"{name}.png"
        if target_task == "regression":
            regression_plot(plot, name, truth, result)
        elif target_task == "classification":
            classification_plot(plot, name, truth, result, classes.get(name))
        else:
            survival_plot(plot, name, time[rows], truth, result)
        report["targets"][name] = {**result.summary(), "plot": plot.name, **({"time_column": time_column} if time is not None else {}),
                                   **({"classes": classes[name]} if name in classes else {})}
        for row, fold, value, predicted in zip(rows, result.fold_of, truth, result.predictions):
            writer.writerow([ids[row], name, target_task, int(fold), f"{value:g}", f"{predicted:.6g}"])
    write_text(out_dir / "predictions.csv", predictions.getvalue())
    write_json(out_dir / "probe.json", report)
    return report

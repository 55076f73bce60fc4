"""Figures of a probe's out-of-fold predictions (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drasclr_monailabel.probe.probes import ProbeResult
from drasclr_monailabel.probe.survival import kaplan_meier, logrank_p_value
from drasclr_monailabel.utils.atomic import write_with


def _figure(size: tuple[float, float] = (5.0, 4.5)):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    return figure, figure.subplots()


def _headline(result: ProbeResult, metric: str) -> str:
    summary = result.summary()["metrics"][metric]
    return f"{metric} {summary['mean']:.3f} ± {summary['std']:.3f} over {len(summary['folds'])} folds"


def regression_plot(path: str | Path, target_name: str, truth: np.ndarray, result: ProbeResult) -> None:
    """Predicted against true value, one colour per outer fold, with the identity line."""
    figure, ax = _figure()
    for fold in np.unique(result.fold_of):
        rows = result.fold_of == fold
        ax.scatter(truth[rows], result.predictions[rows], s=18, label=f"fold {fold + 1}")
    low, high = float(min(truth.min(), result.predictions.min())), float(max(truth.max(), result.predictions.max()))
    ax.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel(f"true {target_name}")
    ax.set_ylabel(f"predicted {target_name} (out of fold)")
    ax.set_title(f"{target_name}: {_headline(result, 'r2')}", fontsize=9)
    ax.legend(fontsize=7)
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, format="png"))


def classification_plot(path: str | Path, target_name: str, labels: np.ndarray, result: ProbeResult,
                        class_names: list[str] | None = None) -> None:
    """ROC curve of the out-of-fold probabilities (two classes), or the confusion matrix of the
    out-of-fold most probable classes (more)."""
    from sklearn.metrics import roc_curve

    figure, ax = _figure()
    if class_names is not None and len(class_names) > 2:
        k = len(class_names)
        counts = np.zeros((k, k), dtype=int)
        np.add.at(counts, (labels.astype(int), result.predictions.astype(int)), 1)
        ax.imshow(counts, cmap="Blues")
        for (row, column), count in np.ndenumerate(counts):
            ax.text(column, row, str(count), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(k), class_names, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
        ax.set_xlabel("predicted (out of fold)")
        ax.set_ylabel("true")
        ax.set_title(f"{target_name}: {_headline(result, 'auc')}", fontsize=9)
        figure.tight_layout()
        write_with(path, lambda tmp: figure.savefig(tmp, format="png"))
        return
    false_positive, true_positive, _ = roc_curve(labels.astype(int), result.predictions)
    ax.plot(false_positive, true_positive, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{target_name}: {_headline(result, 'auc')}", fontsize=9)
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, format="png"))


def survival_plot(path: str | Path, target_name: str, time: np.ndarray, event: np.ndarray, result: ProbeResult) -> None:
    """Kaplan-Meier curves of the subjects above and below the median out-of-fold risk.

    Each subject's risk comes from the model that did not see it (cross-validated Kaplan-Meier
    curves, Simon et al. 2011), so the separation is an honest estimate; the log-rank p-value is
    shown.
    """
    high = result.predictions > np.median(result.predictions)
    figure, ax = _figure()
    for group, name in ((~high, "low risk"), (high, "high risk")):
        steps, survival = kaplan_meier(time[group], event[group])
        ax.step(steps, survival, where="post", label=f"{name} (n={int(group.sum())}, events={int(event[group].sum())})")
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{target_name}: {_headline(result, 'c_index')}, log-rank p={logrank_p_value(time, event, high):.3g}", fontsize=9)
    ax.legend(fontsize=8)
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, format="png"))

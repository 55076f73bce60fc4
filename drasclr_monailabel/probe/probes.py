"""Cross-validated linear probes of fixed embeddings: ridge, logistic and Cox.

Every probe takes the outer folds as given (:func:`make_splits`), so several embeddings can be
compared on the same folds. Inside each outer training fold the features are standardised (the
scaler sees only that fold) and the regularisation strength is chosen by an inner
cross-validation on that fold alone; the held-out fold is predicted once. Metrics are reported per
fold (mean and standard deviation) and on all out-of-fold predictions pooled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import LinAlgWarning
from scipy.stats import pearsonr
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from drasclr_monailabel.probe.survival import (
    cox_fit,
    cox_negative_log_likelihood,
    harrell_c_index,
)

RIDGE_ALPHAS = np.logspace(-3, 5, 17)
LOGISTIC_CS = np.logspace(-4, 4, 17)
COX_PENALTIES = np.logspace(-4, 2, 13)
INNER_FOLDS = 5

Splits = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class ProbeResult:
    """What a probe measured.

    Attributes:
        task: ``regression``, ``classification`` or ``survival``.
        n: subjects used.
        folds: per-metric list of the held-out folds' values.
        pooled: metrics on all out-of-fold predictions together.
        predictions: (n,) out-of-fold prediction: the value (regression), the probability of
            class 1 (classification) or the risk score ``x @ beta`` (survival; higher = earlier event).
        fold_of: (n,) the outer fold that predicted each subject.
        regularisation: the strength chosen by the inner CV in each fold (ridge alpha, logistic C,
            Cox penalty).
    """

    task: str
    n: int
    folds: dict[str, list[float]]
    pooled: dict[str, float]
    predictions: np.ndarray
    fold_of: np.ndarray
    regularisation: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: ``{metric: {"mean", "std", "folds"}}``, pooled metrics, chosen regularisation."""
        per_metric = {}
        for name, values in self.folds.items():
            finite = [v for v in values if np.isfinite(v)]
            per_metric[name] = {"mean": float(np.mean(finite)) if finite else float("nan"),
                                "std": float(np.std(finite)) if finite else float("nan"), "folds": [float(v) for v in values]}
        return {"task": self.task, "n": self.n, "metrics": per_metric, "pooled": self.pooled,
                "regularisation": [float(v) for v in self.regularisation]}


def make_splits(n: int, folds: int, seed: int, strata: np.ndarray | None = None) -> Splits:
    """Seeded, shuffled (train, test) index pairs; stratified by ``strata`` (class or event) when given."""
    if strata is not None:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        return [(train, test) for train, test in splitter.split(np.zeros((n, 1)), strata)]
    return [(train, test) for train, test in KFold(folds, shuffle=True, random_state=seed).split(np.zeros((n, 1)))]


def ridge_probe(features: np.ndarray, target: np.ndarray, splits: Splits, groups: np.ndarray | None = None) -> ProbeResult:
    """Ridge regression of ``target`` (n,) on ``features`` (n, d). Metrics: R^2 and Pearson r.

    Alpha (:data:`RIDGE_ALPHAS`) by inner leave-one-out (scikit-learn's efficient LOO), or, with
    ``groups`` (n,) (e.g. the subject of each patch), by inner folds of whole groups: rows of one
    subject predict each other far better than another subject's, so leave-one-row-out would pick
    an alpha that fits subjects rather than the target and fails on held-out subjects.
    """
    target = np.asarray(target, dtype=np.float64)
    predicted, fold_of, alphas = np.zeros_like(target), np.zeros(len(target), dtype=int), []
    metrics: dict[str, list[float]] = {"r2": [], "pearson_r": []}
    for number, (train, test) in enumerate(splits):
        inner = None if groups is None else _group_folds(np.asarray(groups)[train])
        with warnings.catch_warnings():  # the smallest alphas are ill-conditioned on wide features; they lose the inner CV
            warnings.simplefilter("ignore", LinAlgWarning)
            warnings.filterwarnings("ignore", "Singular matrix in solving dual problem", UserWarning)
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, cv=inner)).fit(features[train], target[train])
        predicted[test], fold_of[test] = model.predict(features[test]), number
        alphas.append(float(model[-1].alpha_))
        metrics["r2"].append(float(r2_score(target[test], predicted[test])))
        metrics["pearson_r"].append(_pearson(target[test], predicted[test]))
    pooled = {"r2": float(r2_score(target, predicted)), "pearson_r": _pearson(target, predicted)}
    return ProbeResult("regression", len(target), metrics, pooled, predicted, fold_of, alphas)


def logistic_probe(features: np.ndarray, labels: np.ndarray, splits: Splits, groups: np.ndarray | None = None) -> ProbeResult:
    """L2 logistic regression of class ``labels`` (n,) 0 .. K-1 (binary, or multinomial for K > 2); C by
    inner stratified CV minimising the log loss (a proper score: AUC is the same for many C and
    would pick the most shrunk, uncalibrated model). Metrics: ROC AUC (K > 2: one-vs-rest, macro
    average) and accuracy of the most probable class.

    ``groups`` (n,): rows that belong together (e.g. the slices of one scan) stay together in the
    inner folds too; otherwise C is chosen by how well rows of the same group predict each other,
    which rewards telling the groups apart (inner folds where a class is missing are skipped).

    ``predictions`` is the probability of class 1 when K = 2, else the most probable class.
    """
    labels = np.asarray(labels).astype(int)
    n_classes = int(labels.max()) + 1
    probability, fold_of, strengths = np.zeros((len(labels), n_classes)), np.zeros(len(labels), dtype=int), []
    metrics: dict[str, list[float]] = {"auc": [], "accuracy": []}
    for number, (train, test) in enumerate(splits):
        inner = inner_splits(labels[train], None if groups is None else np.asarray(groups)[train], number)
        classifier = LogisticRegressionCV(Cs=LOGISTIC_CS, l1_ratios=(0.0,), cv=inner, scoring="neg_log_loss", max_iter=5000,
                                          use_legacy_attributes=False)
        model = make_pipeline(StandardScaler(), classifier).fit(features[train], labels[train])
        probability[np.ix_(test, model[-1].classes_)], fold_of[test] = model.predict_proba(features[test]), number
        strengths.append(float(np.ravel(model[-1].C_)[0]))
        metrics["auc"].append(_auc(labels[test], probability[test]))
        metrics["accuracy"].append(float(accuracy_score(labels[test], probability[test].argmax(axis=1))))
    pooled = {"auc": _auc(labels, probability), "accuracy": float(accuracy_score(labels, probability.argmax(axis=1)))}
    predictions = probability[:, 1] if n_classes == 2 else probability.argmax(axis=1).astype(np.float64)
    return ProbeResult("classification", len(labels), metrics, pooled, predictions, fold_of, strengths)


def cox_probe(features: np.ndarray, time: np.ndarray, event: np.ndarray, splits: Splits) -> ProbeResult:
    """L2-penalised Cox model; the penalty maximises the inner cross-validated partial
    log-likelihood (Verweij and van Houwelingen, 1993). Metric: Harrell's C-index of the risk score."""
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event).astype(int)
    risk, fold_of, penalties = np.zeros(len(time)), np.zeros(len(time), dtype=int), []
    metrics: dict[str, list[float]] = {"c_index": []}
    for number, (train, test) in enumerate(splits):
        scaler = StandardScaler().fit(features[train])
        x_train = scaler.transform(features[train])
        penalty = select_cox_penalty(x_train, time[train], event[train], seed=number)
        beta = cox_fit(x_train, time[train], event[train], penalty)
        risk[test], fold_of[test] = scaler.transform(features[test]) @ beta, number
        penalties.append(penalty)
        metrics["c_index"].append(harrell_c_index(time[test], event[test], risk[test]))
    pooled = {"c_index": harrell_c_index(time, event, risk)}
    return ProbeResult("survival", len(time), metrics, pooled, risk, fold_of, penalties)


def select_cox_penalty(x: np.ndarray, time: np.ndarray, event: np.ndarray, seed: int) -> float:
    """The penalty of :data:`COX_PENALTIES` with the best cross-validated partial log-likelihood.

    For inner fold k: ``l(beta_-k) - l_-k(beta_-k)``, the full data's log-likelihood minus the
    training part's, both at the coefficients fitted without fold k. This uses every risk set of
    the whole sample, so it stays defined when a held-out fold has one or two events.
    """
    splits = make_splits(len(time), _inner_folds(event), seed, strata=event)
    scores = []
    for penalty in COX_PENALTIES:
        total = 0.0
        for train, _ in splits:
            beta = cox_fit(x[train], time[train], event[train], penalty)
            total += cox_negative_log_likelihood(beta, x[train], time[train], event[train])[0] \
                - cox_negative_log_likelihood(beta, x, time, event)[0]
        scores.append(total)
    return float(COX_PENALTIES[int(np.argmax(scores))])


def inner_splits(labels: np.ndarray, groups: np.ndarray | None, seed: int) -> Any:
    """Inner CV of a logistic probe: stratified folds, or (``groups`` given) folds of whole groups,
    stratified, keeping those with every class on both sides."""
    if groups is None:
        return StratifiedKFold(_inner_folds(labels), shuffle=True, random_state=seed)
    splitter = StratifiedGroupKFold(min(INNER_FOLDS, len(np.unique(groups))), shuffle=True, random_state=seed)
    splits = [(a, b) for a, b in splitter.split(np.zeros((len(labels), 1)), labels, groups)
              if len(np.unique(labels[a])) == len(np.unique(labels[b])) == len(np.unique(labels))]
    if not splits:
        raise ValueError("no inner split by group holds every class on both sides: too few groups")
    return splits


def _group_folds(groups: np.ndarray) -> Splits:
    """Inner folds of whole groups (at most :data:`INNER_FOLDS`, at least 2 groups needed)."""
    count = len(np.unique(groups))
    if count < 2:
        raise ValueError("a grouped inner split needs at least 2 groups in every training fold")
    return list(GroupKFold(min(INNER_FOLDS, count)).split(np.zeros((len(groups), 1)), groups=groups))


def _inner_folds(strata: np.ndarray) -> int:
    """Inner folds: :data:`INNER_FOLDS`, fewer when a class (or events / censored) is rarer, at least 2."""
    return max(2, min(INNER_FOLDS, int(np.bincount(strata).min())))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(pearsonr(a, b).statistic)


def _auc(labels: np.ndarray, probability: np.ndarray) -> float:
    """ROC AUC of class probabilities (n, K): class 1's for K = 2, else one-vs-rest macro over the
    classes present (NaN when fewer than two are)."""
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if probability.shape[1] == 2:
        return float(roc_auc_score(labels, probability[:, 1]))
    return float(np.mean([roc_auc_score(labels == k, probability[:, k]) for k in present]))

"""Probes: ridge / logistic / Cox on simulated data with a known answer, survival helpers, `drasclr probe` CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold

from drasclr_monailabel.cli.main import main
from drasclr_monailabel.probe.probes import (
    cox_probe,
    inner_splits,
    logistic_probe,
    make_splits,
    ridge_probe,
)
from drasclr_monailabel.probe.survival import (
    cox_fit,
    cox_negative_log_likelihood,
    harrell_c_index,
    kaplan_meier,
    logrank_p_value,
)


def linear_data(n: int = 60, d: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, 3.0 * x[:, 0] - 2.0 * x[:, 1] + 0.3 * rng.standard_normal(n)


def survival_data(n: int, beta: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponential times with hazard exp(x @ beta), uniform censoring."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(beta)))
    death = rng.exponential(1.0 / np.exp(x @ beta))
    censor = rng.uniform(0.5, 3.0, n)
    return x, np.minimum(death, censor), (death <= censor).astype(int)


def test_ridge_probe_finds_a_linear_signal_and_not_noise():
    x, y = linear_data()
    splits = make_splits(len(y), 5, seed=0)
    signal = ridge_probe(x, y, splits)
    noise = ridge_probe(np.random.default_rng(1).standard_normal(x.shape), y, splits)
    assert signal.pooled["r2"] > 0.95 and signal.summary()["metrics"]["pearson_r"]["mean"] > 0.95
    assert noise.pooled["r2"] < 0.1
    assert len(signal.folds["r2"]) == 5 and sorted(np.concatenate([t for _, t in splits]).tolist()) == list(range(len(y)))


def test_features_are_standardised_inside_the_folds():
    x, y = linear_data()
    scaled = x * np.logspace(-4, 4, x.shape[1])  # wildly different column scales change nothing
    splits = make_splits(len(y), 5, seed=0)
    np.testing.assert_allclose(ridge_probe(scaled, y, splits).predictions, ridge_probe(x, y, splits).predictions, rtol=1e-6, atol=1e-6)


def subject_confounded_data(seed: int, subjects: int = 20, rows: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of subjects (e.g. patches) whose features identify the subject and whose target has a
    per-subject level that nothing in the features predicts for a new subject."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(subjects), rows)
    identity = 3 * rng.standard_normal((subjects, 60))[groups]
    signal = rng.standard_normal(len(groups))
    target = signal + rng.standard_normal(subjects)[groups]
    features = np.column_stack([signal + 0.5 * rng.standard_normal(len(groups)), identity + 0.1 * rng.standard_normal(identity.shape)])
    return features, target, groups


def test_ridge_probe_chooses_alpha_by_whole_subjects_when_given_groups():
    by_row, by_subject, alpha_row, alpha_subject = [], [], [], []
    for seed in range(8):  # one draw is noisy (5 inner folds of 3-4 subjects); the average is not
        x, y, groups = subject_confounded_data(seed)
        splits = list(GroupKFold(5).split(x, groups=groups))
        row, subject = ridge_probe(x, y, splits), ridge_probe(x, y, splits, groups=groups)
        by_row.append(row.pooled["r2"])
        by_subject.append(subject.pooled["r2"])
        alpha_row.append(np.mean(np.log10(row.regularisation)))
        alpha_subject.append(np.mean(np.log10(subject.regularisation)))
    # leave-one-row-out rewards reading the subject back, so it shrinks too little for new subjects
    assert np.mean(alpha_subject) > np.mean(alpha_row) + 0.5
    assert np.mean(by_subject) > np.mean(by_row) + 0.05


def test_logistic_probe_separates_classes():
    x, y = linear_data(n=80, d=5)
    labels = (y > np.median(y)).astype(int)
    result = logistic_probe(x, labels, make_splits(len(labels), 5, seed=0, strata=labels))
    assert result.pooled["auc"] > 0.95 and result.summary()["metrics"]["accuracy"]["mean"] > 0.85
    assert ((result.predictions >= 0) & (result.predictions <= 1)).all()


def test_grouped_probe_never_splits_a_group_when_choosing_its_regularisation():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(9), 12)  # e.g. the slices of 9 scans
    labels = (rng.random(len(groups)) < np.repeat([0.1, 0.9, 0.5] * 3, 12)).astype(int)
    for train, test in inner_splits(labels, groups, seed=0):
        assert not set(groups[train]) & set(groups[test])
        assert set(labels[train]) == set(labels[test]) == {0, 1}
    x = np.column_stack([labels + rng.normal(0, 0.5, len(labels)), rng.normal(size=(len(labels), 3))])
    outer = [(np.flatnonzero(groups // 3 != f), np.flatnonzero(groups // 3 == f)) for f in range(3)]
    assert min(logistic_probe(x, labels, outer, groups=groups).folds["auc"]) > 0.8  # d' = 2: about 0.92 at best


def test_cox_gradient_matches_finite_differences_with_tied_times():
    rng = np.random.default_rng(0)
    x, time = rng.standard_normal((30, 3)), rng.integers(1, 8, 30).astype(float)  # many ties
    event = rng.integers(0, 2, 30)
    beta = rng.standard_normal(3) * 0.5
    _, grad = cox_negative_log_likelihood(beta, x, time, event)
    numeric = [(cox_negative_log_likelihood(beta + h, x, time, event)[0] - cox_negative_log_likelihood(beta - h, x, time, event)[0]) / 2e-6
               for h in np.eye(3) * 1e-6]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_cox_fit_recovers_known_coefficients():
    true = np.array([0.8, -0.5, 0.0])
    x, time, event = survival_data(1500, true, seed=0)
    estimate = cox_fit(x, time, event, penalty=0.0)
    np.testing.assert_allclose(estimate, true, atol=0.1)
    assert np.abs(cox_fit(x, time, event, penalty=1.0)).sum() < np.abs(estimate).sum()  # the penalty shrinks


def test_cox_probe_ranks_risk():
    x, time, event = survival_data(120, np.array([1.0, 0.0, 0.0, 0.0]), seed=1)
    result = cox_probe(x, time, event, make_splits(len(time), 5, seed=0, strata=event))
    assert 0.7 < result.pooled["c_index"] < 1.0 and len(result.regularisation) == 5


def test_harrell_c_index_by_hand():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 0, 1])
    # comparable pairs (earlier time is an event): (0,1) (0,2) (0,3) (1,2) (1,3) = 5
    assert harrell_c_index(time, event, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0
    assert harrell_c_index(time, event, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    assert harrell_c_index(time, event, np.array([4.0, 1.0, 2.0, 1.0])) == pytest.approx(3.5 / 5)  # (1,3) tied: 1/2
    assert np.isnan(harrell_c_index(time, np.zeros(4), np.ones(4)))


def test_kaplan_meier_by_hand_and_logrank():
    steps, survival = kaplan_meier(np.array([1.0, 2.0, 2.0, 3.0, 5.0]), np.array([1, 1, 0, 1, 0]))
    np.testing.assert_allclose(steps, [0, 1, 2, 3])
    np.testing.assert_allclose(survival, [1.0, 4 / 5, 4 / 5 * 3 / 4, 4 / 5 * 3 / 4 * 1 / 2])
    rng = np.random.default_rng(0)
    group = np.arange(200) < 100
    time = np.where(group, rng.exponential(1.0, 200), rng.exponential(4.0, 200))
    assert logrank_p_value(time, np.ones(200), group) < 1e-4
    assert logrank_p_value(rng.exponential(1.0, 200), np.ones(200), group) > 0.01


@pytest.fixture
def probe_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """An embeddings.npz of 40 subjects and a phenotype CSV whose columns depend on the embeddings."""
    rng = np.random.default_rng(0)
    ids = np.array([f"case{i:02d}" for i in range(40)])
    x = rng.standard_normal((40, 8)).astype(np.float32)
    severity = 10 + 5 * x[:, 0] + rng.normal(0, 1, 40)
    _, time, event = survival_data(40, np.zeros(1), seed=2)
    np.savez(tmp_path / "emb.npz", ids=ids, embeddings=x)
    with open(tmp_path / "phenotypes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "severity", "copd", "grade", "survival_time", "event", "note"])
        for k in range(40):
            grade = "mild" if severity[k] < 7 else "moderate" if severity[k] < 13 else "severe"
            writer.writerow([ids[k], f"{severity[k]:.3f}", int(severity[k] > 10), grade, f"{time[k]:.3f}", event[k], "x"])
        writer.writerow(["not_embedded", "1.0", "0", "mild", "1.0", "1", "extra rows are ignored"])
    return tmp_path / "emb.npz", tmp_path / "phenotypes.csv"


def test_probe_command_writes_metrics_predictions_and_plots(probe_inputs, tmp_path):
    embeddings, phenotypes = probe_inputs
    out = tmp_path / "probe"
    assert main(["probe", "--embeddings", str(embeddings), "--phenotypes", str(phenotypes), "--target", "severity", "copd",
                 "--out", str(out)]) == 0
    report = json.loads((out / "probe.json").read_text())
    assert report["format"] == "drasclr-probe/1" and report["folds"] == 5
    assert report["targets"]["severity"]["task"] == "regression" and report["targets"]["copd"]["task"] == "classification"
    assert report["targets"]["severity"]["metrics"]["r2"]["mean"] > 0.8 and report["targets"]["copd"]["pooled"]["auc"] > 0.85
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 80 and {r["target"] for r in rows} == {"severity", "copd"}
    assert (out / "severity.png").stat().st_size > 0 and (out / "copd.png").stat().st_size > 0
    assert main(["probe", "--embeddings", str(embeddings), "--phenotypes", str(phenotypes), "--target", "event",
                 "--task", "survival", "--out", str(out / "surv")]) == 0
    survival = json.loads((out / "surv" / "probe.json").read_text())["targets"]["event"]
    assert survival["task"] == "survival" and 0.0 <= survival["pooled"]["c_index"] <= 1.0 and (out / "surv" / "event.png").is_file()


def test_same_seed_same_folds_and_result(probe_inputs, tmp_path):
    embeddings, phenotypes = probe_inputs
    for name in ("a", "b"):
        assert main(["probe", "--embeddings", str(embeddings), "--phenotypes", str(phenotypes), "--target", "severity",
                     "--seed", "3", "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()


@pytest.mark.parametrize("arguments, expected", [
    (["--target", "fev1"], "has no column 'fev1'"),
    (["--target", "severity", "--id-column", "note"], "has no row for 40 of the 40 embedded ids"),
    (["--target", "severity", "--task", "survival"], "event indicators 0 / 1"),
    (["--target", "copd", "--folds", "30"], "and 30 of each"),
])
def test_bad_phenotypes_give_one_line_and_exit_2(arguments, expected, probe_inputs, tmp_path, capsys):
    embeddings, phenotypes = probe_inputs
    code = main(["probe", "--embeddings", str(embeddings), "--phenotypes", str(phenotypes), "--out", str(tmp_path / "p"), *arguments])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and expected in error
    assert not (tmp_path / "p" / "probe.json").exists()


def test_ids_that_do_not_match_are_refused(probe_inputs, tmp_path, capsys):
    embeddings, phenotypes = probe_inputs
    rows = phenotypes.read_text().splitlines()
    phenotypes.write_text("\n".join(rows[:1] + [r.replace("case", "subject") for r in rows[1:]]) + "\n")
    assert main(["probe", "--embeddings", str(embeddings), "--phenotypes", str(phenotypes), "--target", "severity",
                 "--out", str(tmp_path / "p")]) == 2
    error = capsys.readouterr().err
    assert str(phenotypes) in error and "case00" in error


def test_a_text_column_is_a_categorical_target(probe_inputs, tmp_path):
    embeddings, phenotypes = probe_inputs
    assert main(["probe", "--embeddings", str(embeddings), "--phenotypes", str(phenotypes), "--target", "grade",
                 "--folds", "3", "--out", str(tmp_path / "p")]) == 0
    block = json.loads((tmp_path / "p" / "probe.json").read_text())["targets"]["grade"]
    assert block["task"] == "classification" and block["classes"] == ["mild", "moderate", "severe"]
    assert block["pooled"]["auc"] > 0.8 and block["pooled"]["accuracy"] > 0.6  # chance: AUC 0.5, accuracy about 1/3
    with open(tmp_path / "p" / "predictions.csv", newline="") as fh:
        predicted = {row["predicted"] for row in csv.DictReader(fh)}
    assert predicted <= {"0", "1", "2"} and (tmp_path / "p" / "grade.png").stat().st_size > 0

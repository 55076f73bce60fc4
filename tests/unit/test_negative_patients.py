"""benchmarks/negative_patients.py: the share of a query's fresh negatives from its own patient,
and the loss and top-1 of an encoder that tells only the patients apart."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from drasclr_monailabel.errors import InputError
from tests.fixtures.benchmark import benchmark_module


@pytest.fixture(scope="module")
def negatives() -> Iterator[ModuleType]:
    yield from benchmark_module("negative_patients")


def test_two_patients_of_two_scans_each_in_one_batch(negatives) -> None:
    """One landmark, four scans (two a patient), batch 4: three others a query, one of them its own patient."""
    shares = negatives.negative_shares(np.ones((4, 1), dtype=bool), np.array(["a", "a", "b", "b"]), batch_size=4, epochs=2)
    assert shares["steps"] == 2 and shares["other_scans_mean"] == 3.0
    assert shares["same_patient_share"] == pytest.approx(1 / 3)
    assert shares["chance_loss"] == pytest.approx(math.log(4)) and shares["chance_top1"] == pytest.approx(0.25)
    assert shares["patient_only_loss"] == pytest.approx(math.log(2)) and shares["patient_only_top1"] == pytest.approx(0.5)


def test_a_landmark_only_one_patient_covers_leaves_nothing_to_tell_apart(negatives) -> None:
    """Landmark 1 is valid only in patient a's scans: there the ceiling is chance."""
    valid = np.array([[True, True], [True, True], [True, False], [True, False]])
    patients = np.array(["a", "a", "b", "b"])
    both = negatives.negative_shares(valid[:, :1], patients, batch_size=4, epochs=1)
    one = negatives.negative_shares(valid[:, 1:], patients, batch_size=4, epochs=1)
    assert one["patient_only_loss"] == pytest.approx(one["chance_loss"]) and one["same_patient_share"] == 1.0
    assert both["patient_only_loss"] < both["chance_loss"]


def test_a_manifest_without_a_scans_source_is_named(negatives, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["id", "source"], ["s0", "/ct/lung1_image.nrrd"], ["s1", ""]])
    assert list(negatives.patients_of(manifest, ("s0",))) == ["lung1_image"]
    with pytest.raises(InputError, match="manifest.csv.*s1"):
        negatives.patients_of(manifest, ("s0", "s1"))


def test_a_manifest_without_the_source_column_is_named(negatives, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,image\ns0,images/s0.nii.gz\n")
    with pytest.raises(InputError, match="manifest.csv.*source"):
        negatives.patients_of(manifest, ("s0",))

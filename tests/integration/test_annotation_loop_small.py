"""benchmarks/annotation_loop.py at its CI size drives the real app round by round and writes the
agreed JSON: round-zero effort is exactly the LAA pre-segmentation's disagreement with the truth,
labels are stored as ``final`` one per round, Dice values are Dice values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.lung_mask import segment_lungs
from drasclr_monailabel.emphysema import PseudoLabelOptions, laa_pseudo_labels
from drasclr_monailabel.io import read_ct
from drasclr_monailabel.nnunet.sources import cases_from_datastore, cases_from_manifest
from drasclr_monailabel.segmentation.threshold import CANDIDATES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "annotation_loop.py"
RUNS = {"random/pretrained", "random/scratch", "diversity/pretrained"}


def run_benchmark(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def laa_disagreement(image: Path, label: Path) -> tuple[int, int]:
    """Voxels and axial slices where the LAA pseudo-label (computed here, not by the app) differs from the truth."""
    volume = read_ct(image)
    laa = laa_pseudo_labels(volume, segment_lungs(volume), PseudoLabelOptions(binary=True)) > 0
    changed = laa != (sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0)
    return int(changed.sum()), int(changed.any(axis=(1, 2)).sum())


@pytest.mark.timeout(900)
def test_small_annotation_loop(tmp_path: Path) -> None:
    out, plots = tmp_path / "loop.json", tmp_path / "plots"
    run = run_benchmark("--size", "small", "--out", str(out), "--plots", str(plots))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())

    assert set(result["strategies"]) == RUNS | {"diversity/scratch"}
    assert "pretrained encoder" in result["strategies"]["diversity/scratch"]["skipped"]
    pool = {case.image_id: case for case in cases_from_manifest(tmp_path / "loop_work" / "fold_A" / "train" / "manifest.csv")}
    laa = result["baseline_laa_only"]
    assert set(laa["per_scan"]) == set(pool) and set(laa["strategies"]) == RUNS and 0.0 <= laa["test_dice"] <= 1.0
    for name in RUNS:
        entry = result["strategies"][name]
        assert len(entry["dice"]) == len(entry["effort_voxels"]) == len(entry["effort_slices"]) == 2, name
        assert all(0.0 <= d <= 1.0 for d in entry["dice"]), name
        assert set(entry["seconds"]) == {"select", "presegment", "train", "score"}
        record = entry["seeds"]["0"]
        assert record["presegmented_by"] == ["emphysema_laa", "emphysema"]
        assert record["labelled"] == [1, 2] and len(set(record["picks"])) == 2
        assert len(record["threshold"]) == 2 and set(record["threshold"]) <= set(CANDIDATES)  # chosen each round
        first = pool[record["picks"][0]]
        assert (record["effort_voxels"][0], record["effort_slices"][0]) == laa_disagreement(first.image, first.label)
        assert laa["strategies"][name]["effort_voxels"] == [laa["per_scan"][i]["voxels"] for i in record["picks"]]
        assert result["goals"]["effort_ratio"][name]["seeds"]["0"] == pytest.approx(
            sum(record["effort_voxels"]) / sum(laa["strategies"][name]["effort_voxels"]), abs=1e-4)

        studies = tmp_path / "loop_work" / "runs" / f"{name.replace('/', '_')}_0" / "studies"
        final = {case.image_id: case.label for case in cases_from_datastore(studies) if case.label is not None}
        assert set(final) == set(record["picks"]), name
        index = json.loads((studies / "datastore_v2.json").read_text())
        for image_id, label in final.items():
            assert "final" in index["objects"][image_id]["labels"], (name, image_id)
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(pool[image_id].label))) > 0
            assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(label))), truth.astype(np.uint8))
    assert "diversity" in result["settings"]["strategies"] and result["settings"]["rounds"] == 2
    assert result["command"].startswith("python benchmarks/annotation_loop.py --size small")
    for png in ("annotation_loop_dice.png", "annotation_loop_effort.png"):
        assert (plots / png).stat().st_size > 10_000


def test_bad_arguments_get_one_line_and_status_2(tmp_path: Path) -> None:
    assert run_benchmark("--help", timeout=60).returncode == 0
    for args, reason in ((["--size", "huge", "--out", str(tmp_path / "x.json")], "invalid choice"),
                         (["--out", str(tmp_path / "x.json"), "--encoder", str(tmp_path)], "no encoder.json"),
                         (["--size", "small"], "--out")):
        run = run_benchmark(*args, timeout=60)
        assert run.returncode == 2 and reason in run.stderr, (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "x.json").exists()

"""`drasclr synth`: exit codes and one-line messages for bad arguments; a small phantom run."""

from __future__ import annotations

import csv

import pytest

from drasclr_monailabel.cli.main import main

PHANTOM = ["--source", "phantom", "--phantom-spacing", "3", "3", "3", "--no-progress"]


def test_phantom_cohort_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["synth", "--n", "2", "--out", str(out), "--seed", "4", "--severity", "5", "10", "--mix", "0", "1", "0",
                 "--mixed-probability", "0", *PHANTOM]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 scans" in printed and "-950 HU threshold" in printed
    assert "share below -950 HU" in printed and "panlobular" in printed
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["subtype"] for r in rows] == ["panlobular", "panlobular"]
    assert all(4.0 <= float(r["severity"]) <= 11.0 for r in rows)
    assert all(r["source"].startswith("phantom:") for r in rows)


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_n_below_one_is_a_usage_error(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(["synth", "--n", value, "--out", str(tmp_path / "out"), *PHANTOM])
    assert exited.value.code == 2
    assert "--n: must be a whole number of at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _assert_one_line_error(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("drasclr synth: error: ")
    for fragment in fragments:
        assert fragment in err


def test_unreadable_source_file_names_the_path_and_writes_nothing(tmp_path, capsys):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    assert main(["synth", "--n", "1", "--out", str(out), "--source", str(broken), "--no-progress"]) == 2
    _assert_one_line_error(capsys, f"{broken}: ")
    assert not out.exists()


def test_missing_source_file_is_refused(tmp_path, capsys):
    missing = tmp_path / "nowhere.nrrd"
    assert main(["synth", "--n", "1", "--out", str(tmp_path / "out"), "--source", str(missing), "--no-progress"]) == 2
    _assert_one_line_error(capsys, f"{missing}: does not exist")
    assert not (tmp_path / "out").exists()


def test_mr_source_is_refused_as_not_ct(tmp_path, capsys, sample_brain_mr):
    assert main(["synth", "--n", "1", "--out", str(tmp_path / "out"), "--source", str(sample_brain_mr), "--no-progress"]) == 2
    _assert_one_line_error(capsys, str(sample_brain_mr), "do not look like CT")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--severity", "30", "10"], "--severity: needs 0 <= LOW <= HIGH"),
        (["--noise", "-5", "10"], "--noise: needs 0 <= LOW <= HIGH"),
        (["--mix", "0", "0", "0"], "--mix: needs non-negative weights"),
        (["--mixed-probability", "1.5"], "--mixed-probability: needs a value in [0, 1]"),
        (["--phantom-spacing", "0", "3", "3"], "--phantom-spacing: needs three positive sizes"),
        (["--lung-hu", "-800", "-900"], "--lung-hu: needs -950 <= LOW <= HIGH <= -700 HU"),
        (["--hu-offset", "-5", "200"], "--hu-offset: needs -100 <= LOW <= HIGH <= 100 HU"),
    ],
)
def test_bad_ranges_exit_2_with_one_line(tmp_path, capsys, extra, fragment):
    assert main(["synth", "--n", "1", "--out", str(tmp_path / "out"), *PHANTOM, *extra]) == 2
    _assert_one_line_error(capsys, fragment)
    assert not (tmp_path / "out").exists()


def test_existing_cohort_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("id\n")
    assert main(["synth", "--n", "1", "--out", str(out), *PHANTOM]) == 2
    _assert_one_line_error(capsys, "already holds a synthetic cohort", "--overwrite")
    assert (out / "manifest.csv").read_text() == "id\n"


def test_help_describes_the_sources(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["synth", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--source" in text and "phantom" in text and "--severity" in text
    assert "lidc0001_image" in text and "--lung-hu" in text and "--hu-offset" in text

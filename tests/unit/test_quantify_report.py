"""The report files: orientation of the PNG views and the CSV table."""

from __future__ import annotations

import csv
import io
from dataclasses import replace

import numpy as np

from drasclr_monailabel.emphysema import quantify
from drasclr_monailabel.emphysema.report import _to_lps, csv_text, render_png

RIGHT_UPPER = 1


def _flip_superior_inferior(volume, lungs):
    top_z = volume.origin[2] + volume.spacing[2] * (volume.hu.shape[0] - 1)
    flipped = replace(volume, hu=volume.hu[::-1].copy(), direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                      origin=(volume.origin[0], volume.origin[1], top_z))
    return flipped, lungs[::-1].copy()


def test_views_are_reoriented_to_lps():
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    # a RAS-like grid: ITK x points to the patient's right, y anterior; z superior
    ras = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    view, spacing = _to_lps(array[:, ::-1, ::-1], ras, (0.5, 0.7, 2.0))
    np.testing.assert_array_equal(view, array)
    assert spacing == (0.5, 0.7, 2.0)
    # axes permuted: array axis 0 runs along world x
    permuted = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    view, spacing = _to_lps(array.transpose(2, 1, 0), permuted, (2.0, 0.7, 0.5))
    np.testing.assert_array_equal(view, array)
    assert spacing == (0.5, 0.7, 2.0)


def test_png_is_the_same_for_a_flipped_series(lung_case):
    lung_case.insert(lung_case.sphere(lung_case.deepest_voxel(RIGHT_UPPER), 6.0))
    report = quantify(lung_case.volume, lung_case.lungs)
    png = render_png(report, lung_case.volume, lung_case.lungs, dpi=40)
    flipped, flipped_lungs = _flip_superior_inferior(lung_case.volume, lung_case.lungs)
    flipped_png = render_png(quantify(flipped, flipped_lungs), flipped, flipped_lungs, dpi=40)
    assert png.startswith(b"\x89PNG") and png == flipped_png


def test_csv_has_one_row_per_region_and_empty_cells_for_missing_values(lung_case):
    right_only = np.where(lung_case.lungs == 1, 1, 0).astype(np.uint8)
    report = quantify(lung_case.volume, right_only, clusters=False)
    rows = list(csv.DictReader(io.StringIO(csv_text(report))))
    by_region = {row["region"]: row for row in rows}
    assert len(rows) == len(report.regions)
    assert by_region["left"]["voxels"] == "0" and by_region["left"]["perc15_hu"] == ""
    assert float(by_region["right"]["volume_l"]) == report.region("right").volume_l
    assert any("no left lung" in w for w in report.warnings)

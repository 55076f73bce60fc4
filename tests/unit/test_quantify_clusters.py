"""LAA cluster statistics: sizes, counts, connectivity and the power-law exponent D."""

from __future__ import annotations

import numpy as np
import pytest

from drasclr_monailabel.emphysema import quantify
from drasclr_monailabel.emphysema.clusters import LARGE_CLUSTER_ML, cluster_statistics, fit_power_law, label_clusters

RIGHT_UPPER, RIGHT_LOWER, LEFT_UPPER, LEFT_LOWER = 1, 3, 4, 6


def test_cluster_sizes_and_counts_match_inserted_spheres(lung_case):
    big = lung_case.sphere(lung_case.deepest_voxel(RIGHT_LOWER), 7.0)  # ~1.4 mL: large
    medium = lung_case.sphere(lung_case.deepest_voxel(LEFT_LOWER), 4.0)  # ~0.27 mL: small
    single = np.zeros_like(big)
    single[lung_case.deepest_voxel(LEFT_UPPER)] = True
    lung_case.insert(big | medium | single)
    clusters = quantify(lung_case.volume, lung_case.lungs).clusters
    expected = sorted(int(m.sum()) * lung_case.voxel_ml for m in (big, medium, single))
    assert clusters.n_clusters == 3
    np.testing.assert_allclose(clusters.sizes_ml, expected)
    assert big.sum() * lung_case.voxel_ml >= LARGE_CLUSTER_ML > medium.sum() * lung_case.voxel_ml
    assert (clusters.n_large, clusters.n_small) == (1, 2)
    assert clusters.total_ml == pytest.approx(sum(expected))
    assert clusters.largest_ml == pytest.approx(expected[-1])
    assert clusters.percent_volume_in_large == pytest.approx(100.0 * expected[-1] / sum(expected))


def test_clusters_are_six_connected():
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1, 1, 1] = mask[2, 2, 1] = True  # share an edge only: two clusters
    mask[3, 3, 3] = mask[3, 3, 4] = True  # share a face: one cluster
    _, sizes = label_clusters(mask)
    assert sorted(sizes[1:].tolist()) == [1, 1, 2]


def test_power_law_exponent_recovers_a_known_d():
    rng = np.random.default_rng(7)
    d_true, s_min = 1.4, 0.01
    sizes = s_min * rng.random(20_000) ** (-1.0 / d_true)  # P(S >= s) = (s / s_min) ** -d
    fit = fit_power_law(sizes, s_min)
    assert fit is not None
    assert fit.d == pytest.approx(d_true, abs=0.1)
    assert fit.r2 > 0.98
    assert fit.min_ml == s_min and fit.max_ml <= np.sort(sizes)[-3]


def test_power_law_needs_enough_clusters():
    assert fit_power_law(np.array([0.02, 0.03, 0.5]), 0.01) is None
    stats = cluster_statistics(np.array([], dtype=np.int64), 0.001, -950)
    assert stats.n_clusters == 0 and stats.power_law is None and stats.median_ml is None
    assert stats.to_dict()["power_law"] is None


def test_fit_excludes_clusters_below_the_minimum_size():
    rng = np.random.default_rng(11)
    sizes = 0.01 * rng.random(5_000) ** (-1.0 / 1.2)
    noise = np.full(50_000, 0.001)  # many single-voxel clusters below the fit range
    with_noise = fit_power_law(np.concatenate([sizes, noise]), 0.01)
    assert with_noise.d == pytest.approx(fit_power_law(sizes, 0.01).d)

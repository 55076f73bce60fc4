"""segmentation.threshold: the emphysema threshold that changes the fewest voxels of the labelled
scans, estimated on lung windows, with ties kept at the default 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drasclr_monailabel.segmentation.threshold import CANDIDATES, best_threshold, changed_voxels, choose_threshold


def test_changed_voxels_count_disagreements_inside_the_lung_only() -> None:
    rng = np.random.default_rng(0)
    emphysema = rng.uniform(size=(5, 6, 7)).astype(np.float32)
    truth = rng.uniform(size=emphysema.shape) < 0.3
    lung = rng.uniform(size=emphysema.shape) < 0.7
    counts = changed_voxels(emphysema, truth, lung, (0.4, 0.6))
    expected = [np.count_nonzero(((emphysema > t) != truth) & lung) for t in (0.4, 0.6)]
    assert counts.tolist() == expected and expected[0] != expected[1]


def test_the_fewest_changes_win_and_a_tie_stays_nearest_the_default() -> None:
    assert best_threshold(np.array([9, 3, 5, 7]), (0.4, 0.5, 0.6, 0.7)) == 0.5
    assert best_threshold(np.array([9, 5, 5, 3]), (0.4, 0.5, 0.6, 0.7)) == 0.7
    assert best_threshold(np.array([4, 4, 4, 4]), (0.4, 0.5, 0.6, 0.7)) == 0.5
    assert best_threshold(np.array([2, 9, 2, 9]), (0.3, 0.5, 0.7, 0.9)) == 0.3  # equally far: the lower one


class _ShiftedModel(torch.nn.Module):
    """P(emphysema) = sigmoid(scale * (cut - CT channel)): where the CT channel is below ``cut``
    it says emphysema with probability above 0.5, so a ``cut`` above the true one over-segments."""

    divisor = 32

    def __init__(self, cut: float, scale: float) -> None:
        super().__init__()
        self.cut, self.scale = cut, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emphysema = self.scale * (self.cut - x[:, 0])
        return torch.stack([torch.zeros_like(emphysema), emphysema], dim=1)


def _case(emphysema_share: float, seed: int, labelled: bool = True):
    """A 40^3 lung grid of uniform noise HU, emphysema (label 1) where the network's CT channel is
    below its ``emphysema_share`` quantile (returned: the true cut)."""
    from drasclr_monailabel.anatomy.pipeline import PreprocessedScan
    from drasclr_monailabel.models.intensity import LUNG_WINDOW
    from drasclr_monailabel.segmentation.case import PreparedCase
    from drasclr_monailabel.segmentation.coordinates import CoordinateMap

    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, -600, size=(40, 40, 40)).astype(np.int16)
    lungs = np.ones(hu.shape, np.uint8)
    lungs[:, :, :3] = 0
    channel = LUNG_WINDOW(torch.from_numpy(hu)).numpy()
    true_cut = float(np.quantile(channel, emphysema_share))
    labels = ((channel < true_cut) & (lungs > 0)).astype(np.uint8)
    scan = PreprocessedScan(image=hu, lungs=lungs, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0),
                            direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), registration=None,
                            landmarks=np.zeros((0, 3), np.int32), valid=np.zeros(0, bool), timings={}, warnings=[])
    coordinates = CoordinateMap(linear=np.eye(3) / 40, constant=np.zeros(3), shape=hu.shape)
    return PreparedCase(f"case{seed}", scan, coordinate_map=coordinates, labels=labels if labelled else None,
                        lungs_native=lungs), true_cut


def test_an_over_segmenting_model_gets_the_threshold_that_undoes_its_shift() -> None:
    case, true_cut = _case(emphysema_share=0.2, seed=1)
    scale = 20.0  # the CT channel moves by 1/632 per HU: 9-11 HU between neighbouring candidates
    # sigmoid(scale * (cut - true_cut)) = 0.8: labelling above 0.8 reproduces the truth
    model = _ShiftedModel(cut=true_cut + float(np.log(0.8 / 0.2)) / scale, scale=scale)
    model.train()
    choice = choose_threshold(model, [case], "cpu", windows=2)
    assert choice["threshold"] == pytest.approx(0.8)
    assert choice["windows"] == 2 and set(choice["changed_voxels"]) == {f"{t:.2f}" for t in CANDIDATES}
    assert choice["changed_voxels"]["0.80"] < choice["changed_voxels"]["0.50"]
    assert model.training  # its mode is restored


def test_choosing_needs_labelled_cases() -> None:
    case, _ = _case(emphysema_share=0.2, seed=2, labelled=False)
    with pytest.raises(ValueError, match="labelled"):
        choose_threshold(_ShiftedModel(0.0, 1.0), [case], "cpu")

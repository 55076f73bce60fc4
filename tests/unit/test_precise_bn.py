"""Precise BatchNorm: the exported encoder's statistics are those of every landmark, not of the
last one-landmark training batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.ssl.cache import open_cache, read_atlas_landmarks
from drasclr_monailabel.ssl.patches import read_crop
from drasclr_monailabel.ssl.sampler import mixed_landmark_batches
from drasclr_monailabel.ssl.precise_bn import recalibrate_batchnorm
from drasclr_monailabel.ssl.trainer import run_pretraining
from tests.unit.test_pretrain import easy_config


def test_recalibration_gives_the_statistics_of_all_samples_and_restores_the_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.eval()
    # batches that differ in level: an average of per-batch variances would miss the spread between them
    data = torch.cat([torch.randn(16, 3) * torch.tensor([1.0, 5.0, 0.1]) + level for level in (-20.0, 0.0, 7.0, 30.0)])
    count = recalibrate_batchnorm(model, data.split(16), model)
    assert count == 4 and not model.training and model[1].momentum == 0.1
    with torch.no_grad():
        activations = model[0](data)
    torch.testing.assert_close(model[1].running_mean, activations.mean(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, activations.var(dim=0), rtol=1e-5, atol=1e-5)


def test_a_failing_batch_leaves_the_statistics_untouched() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before = model[1].running_mean.clone()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] == 1:
            raise RuntimeError("bad batch")
        return model(batch)

    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(model, [torch.randn(8, 3), torch.randn(1, 3)], forward)
    assert torch.equal(model[1].running_mean, before)


def first_layer_statistics(encoder, atlas: Path, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance, per channel, of the first convolution's output over every valid patch
    of every landmark: the statistics inference meets."""
    landmarks = read_atlas_landmarks(atlas)
    index = open_cache(cache, landmarks)
    outputs = []
    with torch.no_grad():
        for subject, landmark in zip(*np.nonzero(index.valid)):
            image = np.load(index.image_paths[subject])
            patch = LUNG_WINDOW(torch.from_numpy(read_crop(image, index.centres[subject, landmark], landmarks.patch_size)))
            conv = encoder.levels[0][0].conv
            outputs.append(conv(patch[None, None], torch.from_numpy(landmarks.coordinates[landmark])))
    maps = torch.cat(outputs).transpose(0, 1).flatten(1)
    return maps.mean(dim=1), maps.var(dim=1)


def test_exported_batchnorm_statistics_match_all_landmark_statistics(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = easy_config(easy_atlas, "train.max_steps=8", "precise_bn.samples=10000", "precise_bn.batch_size=8")
    run_pretraining(config, easy_cache, tmp_path / "run")
    encoder, metadata = load_encoder(tmp_path / "run")
    record = metadata["batchnorm"]
    assert record["statistics"].startswith("precise") and record["samples"] == 32 and record["landmarks"] == 2
    mean, var = first_layer_statistics(encoder, easy_atlas, easy_cache)
    norm = encoder.levels[0][0].norm
    torch.testing.assert_close(norm.running_mean, mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.running_var, var, rtol=1e-4, atol=1e-4)
    # The statistics training left behind (last.pt, one landmark per batch) are far from them.
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["network"]
    assert not torch.allclose(trained["encoder.levels.0.0.norm.running_mean"], mean, rtol=0.02, atol=1e-3)


def test_without_precise_bn_the_export_says_so(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run_pretraining(easy_config(easy_atlas, "train.max_steps=2", "precise_bn.samples=0"), easy_cache, tmp_path / "run")
    _, metadata = load_encoder(tmp_path / "run")
    assert metadata["batchnorm"]["statistics"].startswith("running average")


def test_a_group_norm_encoder_pretrains_exports_and_reports_no_batchnorm(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run_pretraining(easy_config(easy_atlas, "train.max_steps=2", "model.encoder.norm=group"), easy_cache, tmp_path / "run")
    encoder, metadata = load_encoder(tmp_path / "run")
    assert metadata["batchnorm"]["statistics"].startswith("none") and metadata["architecture"]["norm"] == "group"
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in encoder.modules())


def test_mixed_landmark_batches_mix_landmarks_in_grouped_layout_and_cover_every_pair() -> None:
    valid = np.ones((8, 6), dtype=bool)
    valid[:5, 5] = False  # landmark 5: 3 valid subjects, fewer than 4: never drawn
    batches = mixed_landmark_batches(valid, samples=1000, batch_size=8, per_landmark=4, seed=0)
    pairs = []
    for subjects, landmarks in batches:
        assert len(landmarks) == 2 and len(set(landmarks.tolist())) == 2 and len(subjects) == 8
        for group, landmark in enumerate(landmarks):
            assert valid[subjects[group * 4 : group * 4 + 4], landmark].all()
            pairs += [(int(s), int(landmark)) for s in subjects[group * 4 : group * 4 + 4]]
    assert 5 not in {p[1] for p in pairs}
    assert sorted(pairs) == sorted((s, l) for s in range(8) for l in range(5))  # 40 pairs, each once
    assert mixed_landmark_batches(np.eye(3, dtype=bool), 10, 8, 4, seed=0)[0][1].shape == (3,)  # one subject per landmark: groups of one
    assert mixed_landmark_batches(np.zeros((3, 3), dtype=bool), 10, 8, 4, seed=0) == []

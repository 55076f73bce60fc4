"""Pretraining reads a real cache written by `drasclr preprocess` (coarse phantoms, default atlas)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from drasclr_monailabel.cli.main import main
from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.ssl.cache import (
    default_atlas_dir,
    open_cache,
    read_atlas_landmarks,
)
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.ssl.trainer import run_pretraining

SMALL_ENCODER = ["model.encoder.stem_channels=4", "model.encoder.block_channels=[8,8,16]", "model.encoder.top_channels=16",
                 "model.encoder.embedding_dim=16", "model.encoder.num_experts=2", "model.projection_dim=16"]


@pytest.fixture(scope="module")
def preprocessed_cache(phantom_scans: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`drasclr preprocess` of a full-chest and an upper-chest coarse phantom."""
    cache = tmp_path_factory.mktemp("preprocessed") / "cache"
    assert main(["preprocess", str(phantom_scans), "--out", str(cache), "--no-progress"]) == 0
    return cache


@pytest.mark.slow
def test_pretraining_from_a_preprocessed_cache(preprocessed_cache: Path, tmp_path: Path) -> None:
    atlas = read_atlas_landmarks(default_atlas_dir())
    index = open_cache(preprocessed_cache, atlas)
    assert index.n_subjects == 2 and index.centres.shape == (2, atlas.n_landmarks, 3)
    assert not index.valid.all()  # the upper-chest scan misses the lung bases
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = load_recipe(None, ["train.batch_size=2", "train.max_steps=4", "train.num_workers=1", "train.log_every=1",
                                    "train.progress=false", "moco.queue_size=16", *SMALL_ENCODER])
        result = run_pretraining(config, preprocessed_cache, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert result.completed and all(math.isfinite(r["loss"]) for r in result.history)
    assert all(0.0 <= r["neighbour_fraction"] <= 1.0 for r in result.history)
    encoder, metadata = load_encoder(tmp_path / "run", expected_atlas_id=atlas.atlas_id, expected_intensity=LUNG_WINDOW)
    assert metadata["n_landmarks"] == atlas.n_landmarks and metadata["patch_size"] == 32
    # a real patch of the cache through the exported encoder at its landmark's location
    landmark = int(np.flatnonzero(index.valid.all(axis=0))[0])
    image = np.load(index.image_paths[0], mmap_mode="r")
    z, y, x = index.centres[0, landmark]
    patch = torch.from_numpy(np.array(image[z - 16 : z + 16, y - 16 : y + 16, x - 16 : x + 16]))
    h = encoder(LUNG_WINDOW(patch)[None, None], torch.from_numpy(atlas.coordinates[landmark]))
    assert h.shape == (1, 16) and torch.isfinite(h).all()

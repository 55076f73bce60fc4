"""The joint2d3d method inside the generic trainer: a short joint run on CT phantoms plus the real
chest radiograph, exact resume, export and embeddings, the staged schedule, frozen prototypes,
DeepCluster-v2 re-clustering, and masked prediction that learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drasclr_monailabel.errors import ConfigError, InputError
from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.ssl.joint2d3d.embed import JointEmbedder, embed_images, embed_volume
from drasclr_monailabel.ssl.trainer import run_pretraining


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fixtures/threads.py


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)["network"]


def test_joint_run_on_ct_and_a_radiograph_exports_and_embeds(tmp_path: Path, tiny_recipe, phantom_volume_dir: Path,
                                                              sample_chest_radiograph: Path) -> None:
    config = tiny_recipe(f"data.images=[{sample_chest_radiograph}]")
    result = run_pretraining(config, phantom_volume_dir, tmp_path / "run")
    assert result.completed and result.step == 6
    losses = {name for record in result.history for name in record if name.startswith("loss_")}
    assert losses == {"loss_intra", "loss_inter", "loss_masked"}
    assert all(np.isfinite(record["loss"]) for record in result.history)
    encoder, metadata = load_encoder(tmp_path / "run", expected_method="joint2d3d")
    assert metadata["atlas"]["id"] is None and metadata["input"]["num_slices"] == 8
    embedder = JointEmbedder.from_dir(tmp_path / "run")
    slices, volume = embed_volume(embedder, phantom_volume_dir / "phantom1.nii.gz")
    assert slices.shape == (8, 32) and volume.shape == (32,) and np.isfinite(volume).all()
    _, other = embed_volume(embedder, phantom_volume_dir / "phantom2.nii.gz")
    assert not np.allclose(volume, other)
    images = embed_images(tmp_path / "run", [sample_chest_radiograph])
    assert images.shape == (1, 32)


def test_resume_continues_exactly(tmp_path: Path, tiny_recipe, phantom_volume_dir: Path, small_png_images: list[Path]) -> None:
    config = tiny_recipe(f"data.images=[{small_png_images[0]}]")
    run_pretraining(config, phantom_volume_dir, tmp_path / "straight")
    stopped = run_pretraining(config, phantom_volume_dir, tmp_path / "split", stop_at_step=3)
    assert not stopped.completed and stopped.step == 3
    resumed = run_pretraining(config, phantom_volume_dir, tmp_path / "split", resume=True)
    assert resumed.completed and resumed.step == 6
    straight, split = _final_state(tmp_path / "straight"), _final_state(tmp_path / "split")
    assert straight.keys() == split.keys()
    for name in straight:
        assert torch.equal(straight[name], split[name]), name


def test_staged_schedule_reads_volumes_only_when_needed_and_freezes_prototypes(tmp_path: Path, tiny_recipe,
                                                                               phantom_volume_dir: Path) -> None:
    config = tiny_recipe("train.max_steps=4", "clustering.freeze_prototypes_steps=4",
                         "schedule=[{until: 0.5, intra: 1.0, masked: 0.0, inter: 0.0}, {until: 1.0, intra: 1.0, masked: 1.0, inter: 0.0, encoder_in_3d: false}]")
    initial = None

    def remember(method):
        nonlocal initial
        initial = method.network.slice_head.prototypes[0].weight.detach().clone()

    from drasclr_monailabel.ssl.joint2d3d import method as joint

    original = joint.Joint2d3dMethod.build_data
    try:
        joint.Joint2d3dMethod.build_data = lambda self: (remember(self), original(self))[1]
        result = run_pretraining(config, phantom_volume_dir, tmp_path / "run")
    finally:
        joint.Joint2d3dMethod.build_data = original
    assert [sorted(k for k in r if k.startswith("loss_")) for r in result.history] == [["loss_intra"]] * 2 + [["loss_intra", "loss_masked"]] * 2
    torch.testing.assert_close(_final_state(tmp_path / "run")["slice_head.prototypes.0.weight"], initial)


def test_deepcluster_has_targets_from_the_first_step_and_reclusters_each_epoch(tmp_path: Path, tiny_recipe,
                                                                                phantom_volume_dir: Path) -> None:
    config = tiny_recipe("clustering.head=deepcluster", "clustering.heads=2", "schedule=[{intra: 1.0, masked: 0.0, inter: 1.0}]")
    one = run_pretraining(config, phantom_volume_dir, tmp_path / "one", stop_at_step=1)
    assert one.history[0]["loss_intra"] > 0 and one.history[0]["loss_inter"] > 0  # targets at step 1: no empty first epoch
    after_one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)["method_state"]
    for level, n in (("slice", 12), ("volume", 3)):  # every item and every volume was projected and clustered
        assert after_one["memories_filled"] and int(after_one["memories"][level]["filled"].sum()) == n, level
        assert bool((after_one["memories"][level]["assignments"] >= 0).all()), level
    result = run_pretraining(config, phantom_volume_dir, tmp_path / "run")  # 12 slices / batch 6: 2 steps per epoch
    assert all(record["loss_intra"] > 0 and record["loss_inter"] > 0 for record in result.history)
    state = torch.load(tmp_path / "run" / "checkpoints" / "final.pt", weights_only=True)
    memory = state["method_state"]["memories"]["slice"]
    assert bool(memory["filled"].all()) and bool((memory["assignments"] >= 0).all())
    for head in range(2):  # the prototypes are the centroids the samples were assigned to
        prototypes = state["network"][f"slice_head.prototypes.{head}.weight"]
        assert torch.equal((memory["bank"] @ prototypes.t()).argmax(dim=1), memory["assignments"][head])


def test_masked_prediction_learns_without_collapsing(tmp_path: Path, tiny_recipe, phantom_volume_dir: Path) -> None:
    config = tiny_recipe("train.max_steps=40", "train.log_every=1", "optim.lr=0.02", "optim.warmup_steps=2", "data.volumes_per_batch=3",
                         "schedule=[{intra: 0.0, masked: 1.0, inter: 0.0, encoder_in_3d: false}]")
    result = run_pretraining(config, phantom_volume_dir, tmp_path / "run")
    masked = np.array([record["loss_masked"] for record in result.history])
    spread = np.array([record["token_std"] for record in result.history])
    assert masked[:4].mean() > 1.5  # starts near 2: the untrained predictor is unrelated to the centred targets
    assert masked[-8:].mean() < 0.7 * masked[:4].mean()
    assert spread[-8:].mean() > 0.5 * spread[:4].mean()  # targets kept their variety: no collapse


def test_bad_inputs_fail_with_one_line(tmp_path: Path, tiny_recipe, phantom_volume_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no CT scans"):
        run_pretraining(tiny_recipe(), tmp_path / "empty", tmp_path / "run")
    with pytest.raises(InputError, match="does not exist"):
        run_pretraining(tiny_recipe(f"data.images=[{tmp_path / 'missing.png'}]"), phantom_volume_dir, tmp_path / "run")
    with pytest.raises(ConfigError, match="schedule 'until' values must increase"):
        tiny_recipe("schedule=[{until: 0.5}, {until: 0.4}]")


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun(tmp_path: Path, phantom_volume_dir: Path, small_png_images: list[Path]) -> None:
    import subprocess
    import sys

    from tests.fixtures.joint2d3d import TINY_RECIPE

    overrides = [item for entry in TINY_RECIPE if not entry.startswith("method=") for item in ("--set", entry)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "drasclr_monailabel.cli.main", "pretrain", "--method", "joint2d3d", "--cache", str(phantom_volume_dir),
               "--out", str(tmp_path / "run"), *overrides, "--set", "train.max_steps=3", "--set", f"data.stack_dir={tmp_path / 'stacks'}", "--set", f"data.images=[{small_png_images[0]}]"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = torch.load(tmp_path / "run" / "checkpoints" / "final.pt", weights_only=True)
    assert final["world_size"] == 2 and final["step"] == 3
    assert len(final["rng"]) == 2
    _, metadata = load_encoder(tmp_path / "run", expected_method="joint2d3d")
    assert metadata["training"]["global_batch"] == 12


def test_recipes_in_configs_load() -> None:
    from drasclr_monailabel.ssl.recipe import load_recipe

    root = Path(__file__).resolve().parents[2] / "configs"
    full, demo = load_recipe(root / "joint2d3d.yaml"), load_recipe(root / "joint2d3d_demo.yaml")
    assert full.model.slice_encoder.depth == 50 and full.model.slice_encoder.embedding_dim == 640
    assert full.model.num_slices == 64 and full.clustering.slice_prototypes == 3000 and full.crops.local_crops == 6
    assert demo.train.max_steps is not None and demo.model.slice_encoder.depth == 18 and len(demo.schedule) == 3


def test_code_defaults_are_the_full_recipe_and_every_recipe_trains_the_trunk_with_volume_losses() -> None:
    from drasclr_monailabel.config import to_dict
    from drasclr_monailabel.ssl.joint2d3d.config import Joint2d3dConfig
    from drasclr_monailabel.ssl.recipe import load_recipe

    root = Path(__file__).resolve().parents[2] / "configs"
    full, code = to_dict(load_recipe(root / "joint2d3d.yaml")), to_dict(Joint2d3dConfig())
    for section in ("data", "model", "clustering", "crops", "masking", "volume_backprop", "schedule"):  # train/optim are shared
        assert full[section] == code[section], section
    for recipe in (root / "joint2d3d.yaml", root / "joint2d3d_demo.yaml"):
        config = load_recipe(recipe)
        assert all(stage.encoder_in_3d for stage in config.schedule if stage.uses_volumes), recipe.name
        assert config.clustering.volume_queue > 0 and config.clustering.slice_queue > 0, recipe.name

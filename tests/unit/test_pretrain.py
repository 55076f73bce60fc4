"""DrasCLR pretraining end to end on a synthetic cache: learning, exact resume, export, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from drasclr_monailabel.cli.main import main
from drasclr_monailabel.errors import ConfigError, InputError
from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.ssl.distributed import setup
from drasclr_monailabel.ssl.checkpoint import check_reusable
from drasclr_monailabel.ssl.drasclr import DrasclrMethod, contrast_set
from drasclr_monailabel.ssl.recipe import load_recipe
from drasclr_monailabel.ssl.synthetic import (
    write_synthetic_atlas,
    write_synthetic_cache,
)
from drasclr_monailabel.ssl.trainer import Trainer, run_pretraining

# A small encoder on 16^3 patches, a short queue and a fast key network, on subjects of very
# different parenchyma levels: a few dozen steps visibly learn.
EASY = [
    "train.batch_size=8", "train.num_workers=0", "train.log_every=1", "train.progress=false", "train.checkpoint_every=4",
    "moco.queue_size=8", "moco.momentum=0.99", "optim.lr=2.0",
    "model.encoder.stem_channels=4", "model.encoder.block_channels=[8,8,16]", "model.encoder.top_channels=16",
    "model.encoder.embedding_dim=16", "model.encoder.num_experts=2", "model.projection_dim=16",
    "augment.translate_voxels=2", "augment.rotate_degrees=5", "augment.noise_p=0.5", "augment.contrast_p=0.5", "data.crop_size=20",
]
NO_AUGMENTATION = ["augment.affine_p=0", "augment.noise_p=0", "augment.contrast_p=0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fixtures/threads.py


def easy_config(atlas: Path, *overrides: str):
    return load_recipe(None, [*EASY, f"data.atlas={atlas}", *overrides])


def test_short_pretraining_learns_and_exports(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    result = run_pretraining(easy_config(easy_atlas, "train.max_steps=60", *NO_AUGMENTATION), easy_cache, tmp_path / "run")
    assert result.completed and result.step == 60
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 60 and all(math.isfinite(v) for v in losses)
    # The first steps of each landmark see almost empty queues (few negatives, an easier task): skip them.
    assert np.mean(losses[-19:]) < np.mean(losses[3:22]) - 0.2
    assert {"loss_local", "loss_neighbour", "acc_local", "lr", "samples_per_s"} <= set(result.history[-1])
    run = tmp_path / "run"
    assert (run / "checkpoints" / "final.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert set(torch.load(run / "encoder.pt", weights_only=True)) == {"state_dict"}
    encoder, metadata = load_encoder(run, expected_atlas_id="easy-grid", expected_method="drasclr")
    assert metadata["atlas"]["n_landmarks"] == 2 and metadata["patch_size"] == 16
    assert metadata["training"]["steps"] == 60 and metadata["architecture"]["embedding_dim"] == 16
    assert encoder(torch.zeros(2, 1, 16, 16, 16), torch.zeros(3)).shape == (2, 16)


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    config = easy_config(easy_atlas, "train.max_steps=11")  # 4 steps per epoch: stops mid-epoch, resumes across epochs
    straight = run_pretraining(config, easy_cache, tmp_path / "straight")
    stopped = run_pretraining(config, easy_cache, tmp_path / "split", stop_at_step=6)
    assert not stopped.completed and stopped.step == 6
    assert final_state(tmp_path / "split")["step"] == 6
    resumed = run_pretraining(easy_config(easy_atlas, "train.max_steps=11", "train.num_workers=1"), easy_cache,
                              tmp_path / "split", resume=True)
    assert resumed.completed and resumed.step == 11
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "split")
    for part in ("network", "method_state"):
        flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
        assert flat_a.keys() == flat_b.keys()
        for name in flat_a:
            assert torch.equal(flat_a[name], flat_b[name]), f"{part}.{name} differs after resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert a["method_state"]["queues"]["_extra_state"] == b["method_state"]["queues"]["_extra_state"]
    assert [r["loss"] for r in straight.history[6:]] == [r["loss"] for r in resumed.history]


def _flatten(tree: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
    return flat


def test_export_command_writes_the_checkpoint_encoder(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    run_pretraining(easy_config(easy_atlas, "train.max_steps=5"), easy_cache, tmp_path / "run", stop_at_step=2)
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.pt"), "--out", str(tmp_path / "exp")]) == 0
    encoder, metadata = load_encoder(tmp_path / "exp" / "encoder.json", expected_atlas_id="easy-grid")
    network = final_state(tmp_path / "run")["network"]
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, network[f"encoder.{name}"])
    assert metadata["training"]["steps"] == 2
    assert json.loads((tmp_path / "exp" / "encoder.json").read_text())["format"] == "drasclr-encoder/1"


def test_an_existing_run_is_kept_unless_resumed_and_resume_refuses_a_changed_recipe(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    run_pretraining(easy_config(easy_atlas, "train.max_steps=4"), easy_cache, tmp_path / "run", stop_at_step=1)
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(InputError, match="holds a run already"):
        run_pretraining(easy_config(easy_atlas, "train.max_steps=4"), easy_cache, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"'moco.temperature' was 0.2 when this run started and is now 0.1"):
        run_pretraining(easy_config(easy_atlas, "train.max_steps=4", "moco.temperature=0.1"), easy_cache, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before
    with pytest.raises(InputError, match=r"last\.pt: not found"):
        run_pretraining(easy_config(easy_atlas), easy_cache, tmp_path / "fresh", resume=True)


def test_cli_names_a_bad_key_or_value(easy_atlas: Path, easy_cache: Path, tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("method: drasclr\noptim:\n  lr_rate: 0.1\n")
    args = ["pretrain", "--cache", str(easy_cache), "--out", str(tmp_path / "run"), "--atlas", str(easy_atlas)]
    assert main([*args, "--config", str(recipe)]) == 2
    assert "unknown key 'optim.lr_rate'" in capsys.readouterr().err
    assert main([*args, "--set", "train.batch_size=many"]) == 2
    assert "'train.batch_size' must be an integer, got 'many'" in capsys.readouterr().err
    assert main([*args, "--set", "moco.queue_dtype=float8"]) == 2
    assert "'moco.queue_dtype' must be one of float32, float16" in capsys.readouterr().err
    assert main([*args, "--set", "train.batch_size=1"]) == 2
    assert "batch_size must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_recipes_in_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    full, demo = load_recipe(root / "drasclr.yaml"), load_recipe(root / "drasclr_demo.yaml")
    assert full.moco.queue_size == 4096 and full.optim.lr == 0.01 and full.model.encoder.num_experts == 8
    assert demo.train.max_steps is not None and demo.model.encoder == full.model.encoder


def test_cache_of_another_atlas_is_refused(easy_atlas: Path, tmp_path: Path) -> None:
    other = write_synthetic_atlas(tmp_path / "other_atlas", grid=(1, 1, 2), patch_size=16, atlas_id="other-grid")
    cache = write_synthetic_cache(tmp_path / "cache", other, n_subjects=2)
    with pytest.raises(InputError, match=r"synth000_qa\.json: scan was registered to atlas 'other-grid'"):
        DrasclrMethod(easy_config(easy_atlas), setup("cpu"), cache)


def test_trainer_uses_the_scaled_learning_rate(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    config = easy_config(easy_atlas, "train.max_steps=2", "optim.schedule=constant")
    method = DrasclrMethod(config, setup("cpu"), easy_cache)
    result = Trainer(method, config, tmp_path / "run", setup("cpu")).fit()
    assert result.history[0]["lr"] == pytest.approx(2.0 * 8 / 128)


def test_a_cache_too_small_to_form_a_batch_is_refused(easy_atlas: Path, tmp_path: Path) -> None:
    cache = write_synthetic_cache(tmp_path / "cache", easy_atlas, n_subjects=1)
    method = DrasclrMethod(easy_config(easy_atlas), setup("cpu"), cache)
    with pytest.raises(InputError, match=r"cache: cannot form training batches: no landmark has 2 or more valid subjects"):
        method.build_data()


def test_keys_of_the_querys_own_subject_are_never_negatives(easy_atlas: Path, easy_cache: Path) -> None:
    config = easy_config(easy_atlas, *NO_AUGMENTATION, "moco.queue_size=16")
    method = DrasclrMethod(config, setup("cpu"), easy_cache)
    dataset, sampler = method.build_data()
    generator = torch.Generator().manual_seed(0)
    key = next(iter(sampler))
    batch = method.prepare_batch(dataset[key], generator)
    subjects = list(key.subjects)
    # Older keys of two batch subjects and of two other subjects, then this step's keys.
    queued_subjects = [subjects[0], 14 if 14 not in subjects else 15, subjects[1], 13 if 13 not in subjects else 12]
    method.queues.enqueue(torch.nn.functional.normalize(torch.randn(4, 16), dim=1), [key.landmark] * 4, torch.tensor(queued_subjects))
    with torch.no_grad():
        keys, key_subjects, own = method._embed_keys(batch["key"], batch["subjects"], method.locations[key.landmark], generator)
    negatives, excluded = contrast_set(*method.queues.negatives(key.landmark), keys, key_subjects, batch["subjects"])
    assert negatives.shape[0] == 4 + len(subjects)
    for row, subject in enumerate(subjects):
        candidates = queued_subjects + subjects
        assert excluded[row].tolist() == [c == subject for c in candidates]  # only its own subject's keys
    assert torch.equal(keys[own], negatives[4:][own])  # each query's positive is among the excluded
    step = method.training_step(method.network, batch, generator)
    assert step.metrics["negatives"].item() == pytest.approx(4 + len(subjects) - 1 - 2 / len(subjects))


def test_the_batch_only_loss_ignores_queued_keys_and_counts_the_other_subjects(easy_atlas: Path, easy_cache: Path) -> None:
    config = easy_config(easy_atlas, *NO_AUGMENTATION, "moco.queue_size=16")
    method = DrasclrMethod(config, setup("cpu"), easy_cache)
    dataset, sampler = method.build_data()
    key = next(iter(sampler))
    batch = method.prepare_batch(dataset[key], torch.Generator().manual_seed(0))

    def step_metrics() -> dict[str, float]:
        with torch.no_grad():
            step = method.training_step(method.network, batch, torch.Generator().manual_seed(1))
        return {name: float(value) for name, value in step.metrics.items()}

    empty = step_metrics()
    others = [s for s in range(20) if s not in key.subjects][:8]
    method.queues.enqueue(torch.nn.functional.normalize(torch.randn(8, 16), dim=1), [key.landmark] * 8, torch.tensor(others))
    queued = step_metrics()
    assert queued["loss_local"] != pytest.approx(empty["loss_local"])  # the queue changes the training loss ...
    for name in ("loss_local_batch", "loss_local_batch_chance", "acc_local_batch", "acc_local_batch_chance"):
        assert queued[name] == pytest.approx(empty[name], abs=1e-6), name  # ... not the batch-only one
    assert empty["loss_local_batch"] == pytest.approx(empty["loss_local"], abs=1e-6)  # empty queue: the same negatives
    assert empty["loss_local_batch_chance"] == pytest.approx(math.log(len(key.subjects)))
    assert empty["acc_local_batch_chance"] == pytest.approx(1 / len(key.subjects))


def test_the_run_folder_holds_the_queue_plan_and_warns_when_queues_cannot_fill(easy_atlas: Path, easy_cache: Path,
                                                                              tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING"):
        run_pretraining(easy_config(easy_atlas, "train.max_steps=2", "moco.queue_size=4096"), easy_cache, tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["queue_fill"]["queue_size"] == 4096 and plan["queue_fill"]["median_fill_at_end"] < 0.01
    assert plan["warnings"] and "moco.queue_size to about 16" in plan["warnings"][0]
    assert any("negative queues cannot fill" in r.getMessage() for r in caplog.records)
    run_pretraining(easy_config(easy_atlas, "train.max_steps=8", "moco.queue_size=8"), easy_cache, tmp_path / "full")
    assert json.loads((tmp_path / "full" / "plan.json").read_text())["warnings"] == []


def test_resume_accepts_a_key_added_later_at_its_default_only(easy_atlas: Path, easy_cache: Path, tmp_path: Path) -> None:
    run_pretraining(easy_config(easy_atlas, "train.max_steps=4"), easy_cache, tmp_path / "run", stop_at_step=2)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    del payload["config"]["moco"]["other_landmark_negatives"]  # as written by a version without the key
    torch.save(payload, last)
    with pytest.raises(ConfigError, match="other_landmark_negatives"):
        run_pretraining(easy_config(easy_atlas, "train.max_steps=4", "moco.other_landmark_negatives=8"), easy_cache,
                        tmp_path / "run", resume=True)
    assert run_pretraining(easy_config(easy_atlas, "train.max_steps=4"), easy_cache, tmp_path / "run", resume=True).completed


def test_a_finished_run_is_reusable_only_for_the_recipe_it_was_trained_with(easy_atlas: Path, easy_cache: Path,
                                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_pretraining(easy_config(easy_atlas, "train.max_steps=2"), easy_cache, run).completed
    check_reusable(run, easy_config(easy_atlas, "train.max_steps=2"))
    check_reusable(run, easy_config(easy_atlas, "train.max_steps=2", "train.log_every=5"))  # how it ran, not what
    with pytest.raises(ConfigError, match=r"'train.max_steps' was 2 when this run started and is now 4: this finished run "
                                          r"is not the one asked for; use another work folder or remove"):
        check_reusable(run, easy_config(easy_atlas, "train.max_steps=4"))
    with pytest.raises(ConfigError, match=r"'train.seed' was 0 .* now 1"):
        check_reusable(run, easy_config(easy_atlas, "train.max_steps=2", "train.seed=1"))
    (run / "config.yaml").unlink()
    with pytest.raises(InputError, match=r"config\.yaml: cannot be read"):
        check_reusable(run, easy_config(easy_atlas, "train.max_steps=2"))

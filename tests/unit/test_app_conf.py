"""The app's --conf options: strings parsed to types, bad keys and values refused with the key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.tasks.conf import MODELS, parse_app_conf, resolve_app_conf, training_overrides


def test_strings_from_the_command_line_become_typed_values():
    conf = parse_app_conf({"max_epochs": "3", "lr": "0.0005", "skip_training": "true", "labels": "centrilobular,panlobular,paraseptal",
                           "models": "lung,emphysema", "server_mode": "true"})
    assert conf.max_epochs == 3
    assert conf.lr == pytest.approx(5e-4)
    assert conf.skip_training is True
    assert conf.labels == ["centrilobular", "panlobular", "paraseptal"]
    assert conf.models == ["lung", "emphysema"]


def test_the_encoder_batchnorm_source_is_a_training_option():
    assert training_overrides(parse_app_conf({"encoder_batchnorm": "pretraining"}))["encoder_batchnorm"] == "pretraining"
    assert "encoder_batchnorm" not in training_overrides(parse_app_conf({}))  # unset: the fine-tuning recipe's default


def test_defaults_serve_every_model():
    conf = parse_app_conf({})
    assert conf.models == list(MODELS)
    assert conf.labels == ["emphysema"]
    assert conf.network == "drasclr_unet" and parse_app_conf({"network": "segresnet"}).network == "segresnet"


@pytest.mark.parametrize("raw, named", [
    ({"max_epoch": "3"}, "max_epoch"),
    ({"max_epochs": "three"}, "max_epochs"),
    ({"max_epochs": "2.5"}, "max_epochs"),
    ({"max_epochs": "0"}, "max_epochs"),
    ({"skip_training": "maybe"}, "skip_training"),
    ({"lr": "2"}, "lr"),
    ({"device": "gpu"}, "device"),
    ({"models": "emphysema,liver"}, "models"),
    ({"labels": "emphysema,emphysema"}, "labels"),
    ({"labels": "bulla"}, "labels"),
    ({"labels": "../x"}, "labels"),
    ({"epistemic_samples": "1"}, "epistemic_samples"),
    ({"amp": "sometimes"}, "amp"),
    ({"backend": "monai"}, "backend"),
    ({"infer_overlap": "0.9"}, "infer_overlap"),
    ({"emphysema_threshold": "1.2"}, "emphysema_threshold"),
    ({"emphysema_threshold": "0"}, "emphysema_threshold"),
    ({"emphysema_threshold": "nan"}, "emphysema_threshold"),
    ({"emphysema_threshold": "labeled"}, "emphysema_threshold"),
    ({"infer_precision": "half"}, "infer_precision"),
    ({"backend": "nnunet"}, "nnunet_model"),
    ({"nnunet_model": "/tmp"}, "nnunet_model"),
    ({"backend": "nnunet", "nnunet_model": "/nonexistent/model"}, "nnunet_model"),
    ({"patch_size": "48"}, "patch_size"),
    ({"encoder_batchnorm": "batch"}, "encoder_batchnorm"),
    ({"background_nice": "20"}, "background_nice"),
    ({"background_nice": "-5"}, "background_nice"),
    ({"scan_cache_gb": "-1"}, "scan_cache_gb"),
    ({"scan_cache_gb": "lots"}, "scan_cache_gb"),
    ({"network": "unet"}, "network"),
    ({"network": "segresnet", "backend": "nnunet", "nnunet_model": "/tmp"}, "network"),
])
def test_bad_options_are_refused_naming_the_key(raw, named):
    with pytest.raises(ConfigError) as info:
        parse_app_conf(raw)
    message = str(info.value)
    assert message.startswith("--conf: ")
    assert named in message


def test_missing_explicit_encoder_is_refused(tmp_path):
    conf = parse_app_conf({"pretrained": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_app_conf(conf, tmp_path, str(tmp_path / "studies"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "encoder.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="encoder.json"):
        resolve_app_conf(parse_app_conf({"pretrained": str(tmp_path / "half")}), tmp_path, str(tmp_path))


def test_without_encoder_the_app_trains_from_scratch_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("DRASCLR_PRETRAINED", str(tmp_path / "absent"))
    resolved = resolve_app_conf(parse_app_conf({}), tmp_path, str(tmp_path / "studies"))
    assert resolved.pretrained is None
    assert "from scratch" in resolved.pretrained_reason
    resolved = resolve_app_conf(parse_app_conf({"pretrained": "none"}), tmp_path, str(tmp_path / "studies"))
    assert resolved.pretrained is None and "from scratch" in resolved.pretrained_reason


def test_default_encoder_location_is_used_when_present(tmp_path, monkeypatch):
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "encoder.pt").write_bytes(b"x")
    (encoder / "encoder.json").write_text(json.dumps({}))
    monkeypatch.setenv("DRASCLR_PRETRAINED", str(encoder))
    resolved = resolve_app_conf(parse_app_conf({}), tmp_path, str(tmp_path / "studies"))
    assert resolved.pretrained == encoder.resolve()
    file_given = resolve_app_conf(parse_app_conf({"pretrained": str(encoder / "encoder.pt")}), tmp_path, str(tmp_path))
    assert file_given.pretrained == encoder.resolve()


def test_state_lives_in_the_studies_folder_and_amp_only_on_gpu(tmp_path):
    studies = tmp_path / "studies"
    resolved = resolve_app_conf(parse_app_conf({"pretrained": "none", "device": "cpu", "amp": "true"}), tmp_path / "app", str(studies))
    assert resolved.model_dir == studies / ".drasclr" / "model"
    assert resolved.cache_dir == studies / ".drasclr" / "cache"
    assert resolved.device == "cpu" and resolved.amp is False
    custom = resolve_app_conf(parse_app_conf({"pretrained": "none", "model_dir": str(tmp_path / "m")}), tmp_path, str(studies))
    assert custom.model_dir == Path(tmp_path / "m")
    assert custom.labels == {"emphysema": 1}


def test_remote_datastore_keeps_state_in_the_app_folder(tmp_path):
    resolved = resolve_app_conf(parse_app_conf({"pretrained": "none"}), tmp_path / "app", "http://127.0.0.1:8042/dicom-web")
    assert resolved.model_dir == tmp_path / "app" / ".drasclr" / "model"


def test_gpu_that_is_not_there_is_refused(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_app_conf(parse_app_conf({"device": "cuda", "pretrained": "none"}), tmp_path, str(tmp_path))


def test_inference_overlap_defaults_to_the_cpu_speed_option_and_can_be_set(tmp_path: Path) -> None:
    assert resolve_app_conf(parse_app_conf({"device": "cpu"}), tmp_path, str(tmp_path)).infer_overlap == 0.0
    chosen = resolve_app_conf(parse_app_conf({"device": "cpu", "infer_overlap": "0.25"}), tmp_path, str(tmp_path))
    assert chosen.infer_overlap == 0.25


def test_the_emphysema_threshold_is_chosen_on_labelled_scans_unless_a_number_is_given() -> None:
    from drasclr_monailabel.tasks.conf import fixed_threshold

    assert fixed_threshold(parse_app_conf({})) is None
    assert fixed_threshold(parse_app_conf({"emphysema_threshold": "labelled"})) is None
    assert fixed_threshold(parse_app_conf({"emphysema_threshold": "0.7"})) == 0.7


def test_inference_precision_auto_follows_the_hardware_and_can_be_forced(tmp_path: Path) -> None:
    from drasclr_monailabel.segmentation.precision import native_bfloat16

    auto = resolve_app_conf(parse_app_conf({"device": "cpu"}), tmp_path, str(tmp_path)).infer_precision
    assert auto == ("bfloat16" if native_bfloat16("cpu") else "float32")
    for forced in ("float32", "bfloat16"):
        conf = parse_app_conf({"device": "cpu", "infer_precision": forced})
        assert resolve_app_conf(conf, tmp_path, str(tmp_path)).infer_precision == forced

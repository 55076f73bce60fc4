"""The fine-tuned emphysema model as a MONAI Bundle (the MONAI Model Zoo format).

Layout written by :func:`export_bundle` (``drasclr export-bundle``)::

    configs/metadata.json   labels, network input and output, intensity window, atlas id,
                            encoder provenance, licence, versions
    configs/inference.json  the package's MONAI transforms, MONAI's sliding-window inferer and
                            :func:`segment_all`; ``python -m monai.bundle run --config_file ...``,
                            and MONAI Label's monaibundle app serves it
    models/model.pt         the network's state dict (tensors only)
    docs/README.md          what the model does, how to run it, what it was trained on

The bundle needs this package installed (its network and transforms are the package's); it
never holds code of its own.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import drasclr_monailabel
from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.segmentation.checkpoint import load_checkpoint, network_name
from drasclr_monailabel.segmentation.inference import EMPHYSEMA_THRESHOLD, WINDOW, windows_per_pass
from drasclr_monailabel.segmentation.labels import LabelSet
from drasclr_monailabel.segmentation.segresnet import DIVISOR as SEGRESNET_DIVISOR
from drasclr_monailabel.utils.atomic import write_json

BUNDLE_VERSION = "0.1.0"
CHECKPOINT_NAME = "emphysema.pt"
"""The app's published checkpoint in its model folder (``<studies>/.drasclr/model``)."""
TRANSFORMS = "drasclr_monailabel.segmentation.transforms"


def export_bundle(model: Path, out: Path, overwrite: bool = False) -> Path:
    """Write the bundle of the app's model (its model folder or checkpoint file) to ``out``.

    The bundle is assembled in a temporary folder beside ``out`` and renamed into place, so ``out``
    is either the whole bundle or absent.

    Raises:
        ConfigError: ``out`` exists and ``overwrite`` is false.
        InputError: no readable emphysema checkpoint at ``model``.
    """
    checkpoint = model / CHECKPOINT_NAME if model.is_dir() else model
    network, meta = load_checkpoint(checkpoint)
    if out.exists() and not overwrite:
        raise ConfigError(str(out), "exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "configs").mkdir()
        (staging / "models").mkdir()
        (staging / "docs").mkdir()
        torch.save({name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}, staging / "models" / "model.pt")
        (staging / "configs" / "metadata.json").write_text(json.dumps(bundle_metadata(meta), indent=2) + "\n")
        (staging / "configs" / "inference.json").write_text(json.dumps(inference_config(meta), indent=2) + "\n")
        (staging / "docs" / "README.md").write_text(bundle_readme(meta))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def network_definition(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``network_def`` of a checkpoint's ``meta``: the same network :func:`load_checkpoint` builds."""
    if network_name(meta) == "segresnet":
        return {"_target_": "drasclr_monailabel.segmentation.segresnet.MonaiSegResNet",
                "num_classes": LabelSet(tuple(meta["labels"])).num_classes, "dropout": float(meta.get("dropout", 0.1))}
    architecture = {k: v for k, v in meta["encoder_architecture"].items() if k != "name"}
    return {
        "_target_": "drasclr_monailabel.segmentation.network.EmphysemaUNet",
        "encoder": {"_target_": "drasclr_monailabel.models.encoder.DrasclrEncoder",
                    "architecture": {"_target_": "drasclr_monailabel.models.encoder.EncoderArchitecture", **architecture}},
        "num_classes": LabelSet(tuple(meta["labels"])).num_classes,
        "dropout": float(meta.get("dropout", 0.1)),
        "routing_block": meta.get("routing_block"),
    }


def inference_config(meta: dict[str, Any]) -> dict[str, Any]:
    """``configs/inference.json``: every CT in ``dataset_dir`` (NIfTI, NRRD, MHA) is segmented and
    written to ``output_dir`` as ``<name>_seg.nii.gz``, its quantification to ``<name>_quantification.json``.

    Preprocessing and postprocessing are the app's transforms; the inferer is MONAI's sliding
    window over the whole 1 mm grid (64^3 windows, overlap 0.25, Gaussian blending, replicate
    padding: the app's windows, which the app runs only where there is lung). The keys follow
    MONAI Label's ``BundleInferTask`` (the monaibundle app): the network input is ``image``
    (the CT is kept as ``ct``) and postprocessing ends with the labels in MONAI's layout; the
    writer (``saver``) is outside ``postprocessing``, so a server never writes into the bundle.
    """
    transforms = TRANSFORMS
    return {
        "imports": ["$import glob", "$import os", "$import torch", "$import drasclr_monailabel.bundle as drasclr_bundle"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$drasclr_bundle.ct_files(@dataset_dir)",
        "network_def": network_definition(meta),
        "network": "$@network_def.to(@device)",
        "checkpoint": "$torch.load(os.path.join(@bundle_root, 'models', 'model.pt'), map_location=@device, weights_only=True)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": f"{transforms}.ReadCTd", "keys": "image", "volume_key": "ct"},
            {"_target_": f"{transforms}.LungAtlasd", "image_key": "ct", "atlas_id": meta["atlas_id"]},
            {"_target_": f"{transforms}.IntensityWindowd", "input_key": "image"},
            {"_target_": f"{transforms}.AtlasCoordinatesd", "input_key": "image"},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [WINDOW] * 3, "sw_batch_size": windows_per_pass(WINDOW),
                    "overlap": 0.25, "mode": "gaussian", "padding_mode": "replicate"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": f"{transforms}.LungBackgroundd"},
            {"_target_": f"{transforms}.ToInputGridd", "image_key": "ct",
             "threshold": float(meta.get("emphysema_threshold", EMPHYSEMA_THRESHOLD))},
            {"_target_": f"{transforms}.Quantifyd", "image_key": "ct"},
            {"_target_": f"{transforms}.ToMonaiLayoutd", "image_key": "ct"},
        ]},
        "saver": {"_target_": f"{transforms}.SaveLabeld", "output_dir": "@output_dir", "image_key": "ct"},
        "run": ["$@network.load_state_dict(@checkpoint)",
                "$drasclr_bundle.segment_all(@datalist, @preprocessing, @inferer, @postprocessing, @saver, @network, @device)"],
    }


def ct_files(folder: str | Path) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for the CT files (NIfTI, NRRD, MHA) in ``folder``, sorted.

    Raises:
        ConfigError: no such folder, or no CT file in it.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha"))) if folder.is_dir() else []
    if not files:
        raise ConfigError(str(folder), "holds no CT file (.nii, .nii.gz, .nrrd, .mha); set --dataset_dir")
    return [{"image": str(p)} for p in files]


def segment_all(datalist: Iterable[dict[str, Any]], preprocessing: Callable, inferer: Callable, postprocessing: Callable,
                saver: Callable, network: torch.nn.Module, device: str | torch.device) -> list[dict[str, Any]]:
    """Run the bundle on every item, one scan at a time (scans differ in size; the data dictionary
    holds Python objects that a DataLoader cannot collate), as MONAI Label's bundle task does:
    the network on ``image``, the result under ``pred``. Each scan's label is written by ``saver``
    and its quantification beside it; returns ``{"image", "label", "quantification"}`` per scan."""
    network.eval()
    results = []
    for item in datalist:
        data = preprocessing(dict(item))
        with torch.no_grad():
            data["pred"] = inferer(data["image"][None].to(device), network)[0]
        del data["image"]
        data = saver(postprocessing(data))
        label = Path(data["pred_meta_dict"]["saved_to"])
        report = label.with_name(label.name.replace("_seg.nii.gz", "_quantification.json"))
        write_json(report, data["quantification"])
        results.append({"image": item["image"], "label": str(label), "quantification": data["quantification"]})
    return results


def bundle_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """``configs/metadata.json`` after the MONAI Bundle specification, plus the model's provenance."""
    label_set = LabelSet(tuple(meta["labels"]))
    channels = {"0": "background", **{str(i): name for i, name in enumerate(label_set.names, start=1)}}
    segresnet = network_name(meta) == "segresnet"
    block = SEGRESNET_DIVISOR if segresnet else meta.get("routing_block") or 32
    network = "MONAI SegResNet (reads the CT channel only)" if segresnet else "U-Net on an anatomy-aware DrasCLR encoder"
    return {
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "exported by drasclr export-bundle"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"drasclr-monailabel": drasclr_monailabel.__version__, "SimpleITK": _version("SimpleITK")},
        "name": "DrasCLR emphysema segmentation",
        "task": "Emphysema segmentation in chest CT" + (" (subtypes)" if len(label_set.names) > 1 else ""),
        "description": f"{network}, fine-tuned in the drasclr MONAI Label app. "
                       "Input: the CT on a 1 mm grid registered to the lung atlas, with atlas-coordinate channels.",
        "authors": "drasclr-monailabel",
        "copyright": "drasclr-monailabel contributors",
        "license": "Apache-2.0",
        "intended_use": "Research and annotation support only; not for clinical diagnosis.",
        "data_type": "nifti",
        "image_classes": "4 channels: CT in network units (lung window), normalised atlas x, y, z",
        "label_classes": ", ".join(f"{k}: {v}" for k, v in channels.items()),
        "pred_classes": ", ".join(f"{k}: {v}" for k, v in channels.items()),
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 4,
                "spatial_shape": [f"{block}*n"] * 3, "dtype": "float32", "value_range": [-1, 1], "is_patch_data": True,
                "channel_def": {"0": "CT, lung window", "1": "atlas x", "2": "atlas y", "3": "atlas z"}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": label_set.num_classes,
                "spatial_shape": [f"{block}*n"] * 3, "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                "channel_def": channels}},
        },
        "drasclr": {
            "labels": list(label_set.names),
            "intensity": meta.get("intensity"),
            "atlas_id": meta["atlas_id"],
            "network": network_name(meta),
            "routing_block": meta.get("routing_block"),
            "encoder": {"pretrained": meta.get("pretrained"), "pretraining_method": meta.get("pretraining_method")},
            "fine_tuning": {key: meta[key] for key in ("round", "trained_on") if key in meta},
            "exported_with": {"python": platform.python_version(), "drasclr-monailabel": drasclr_monailabel.__version__},
        },
    }


def bundle_readme(meta: dict[str, Any]) -> str:
    """``docs/README.md``: what the bundle does and how to run it."""
    labels = ", ".join(meta["labels"])
    return f"""# DrasCLR emphysema segmentation (MONAI Bundle)

Segments emphysema ({labels}) in chest CT and quantifies it (%LAA-950, Perc15, volumes per lung
and zone). Exported from the drasclr-monailabel MONAI Label app with `drasclr export-bundle`.
Research and annotation support only; not for clinical diagnosis.

## Run

Needs the `drasclr-monailabel` package (its network and transforms) and MONAI:

```bash
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir /path/to/ct_folder --output_dir /path/to/results
```

Every CT file in the folder (NIfTI, NRRD, MHA) gives `<name>_seg.nii.gz` on the scan's own grid
(0 background, {", ".join(f"{i} {n}" for i, n in enumerate(meta["labels"], start=1))}) and
`<name>_quantification.json`.

## Serve with MONAI Label

MONAI Label's `monaibundle` app serves it offline from its model folder:

```bash
monailabel apps --download --name monaibundle --output apps
cp -r /path/to/this/bundle apps/monaibundle/model/drasclr_emphysema
monailabel start_server --app apps/monaibundle --studies /path/to/ct_folder \\
    --conf models drasclr_emphysema --conf zoo_source ngc
```

## Pipeline

The CT is read and checked, its lungs are segmented and registered (affine) to the lung atlas
`{meta["atlas_id"]}`, resampled to a 1 mm grid cropped to the lungs, and given three
atlas-coordinate channels; 64^3 windows (overlap 0.25, Gaussian blending) are segmented by the
network; probabilities outside the lungs are background; the result is resampled onto the
scan's grid. The atlas must be the package's shipped atlas of that id.

## Provenance

- encoder: {meta.get("pretraining_method") or "random initialisation"}{f" ({meta['pretrained']})" if meta.get("pretrained") else ""}
- fine-tuning round: {meta.get("round", "-")}, trained on: {meta.get("trained_on", "-")}
- licence: Apache-2.0 (the weights are derived from the data they were trained on; check its terms)
"""


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"

"""One annotation session against the real emphysema app (in-process), as an annotator in 3D Slicer runs it.

Each round: the app's scoring methods that the strategy ranks by run (as the server runs them in
the background after a training round), the strategy proposes a scan (``/activelearning``); the
app pre-segments it (``emphysema_laa`` in round zero, then the fine-tuned ``emphysema`` model); a
simulated annotator turns the pre-segmentation into the true label, and its effort is counted;
the label is saved as ``final`` (``/datastore/label``); the app trains one round with its own
trainer (``/train/emphysema``); the new model segments the held-out test scans, uploaded as
Slicer uploads a local volume (``/infer/emphysema``), and their Dice against the truth is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.metrics import dice
from drasclr_monailabel.nnunet.sources import SourceCase
from drasclr_monailabel.tasks.in_process import infer_all, label_bytes, save_label

SCORING = {"random": (), "first": (), "epistemic": ("epistemic",), "diversity": ("embedding",),
           "hybrid": ("epistemic", "embedding")}
"""The app's scoring methods each strategy ranks by."""
NEED_ENCODER = ("diversity", "hybrid")
"""Strategies the app offers only with a pretrained encoder."""


@dataclass(frozen=True)
class Effort:
    """What correcting one pre-segmentation into the truth costs.

    Attributes:
        voxels: voxels whose label changed.
        slices: axial slices (first array axis) with at least one changed voxel, the proxy for
            edit time in Slicer's slice views.
    """

    voxels: int
    slices: int


def correction_effort(presegmentation: np.ndarray, truth: np.ndarray) -> Effort:
    """Effort of turning ``presegmentation`` into ``truth`` (both (Z, Y, X); emphysema = label > 0)."""
    changed = (presegmentation > 0) != (truth > 0)
    return Effort(int(np.count_nonzero(changed)), int(np.count_nonzero(changed.any(axis=(1, 2)))))


def true_emphysema(scan: SourceCase) -> tuple[np.ndarray, sitk.Image]:
    """The scan's true binary emphysema (Z, Y, X, uint8; its label file holds 0 or a subtype 1-3) and
    the label image (the scan's geometry)."""
    image = sitk.ReadImage(str(scan.label))
    return (sitk.GetArrayFromImage(image) > 0).astype(np.uint8), image


def laa_effort(client: Any, pool: dict[str, SourceCase]) -> dict[str, Effort]:
    """Effort of correcting the app's ``emphysema_laa`` pre-segmentation of every pool scan."""
    return {image: correction_effort(infer_all(client, "emphysema_laa", image)[1], true_emphysema(scan)[0])
            for image, scan in pool.items()}


def held_out_dice(client: Any, model: str, tests: list[SourceCase]) -> float:
    """Mean Dice (label > 0) of the app's ``model`` on the test scans, each uploaded as Slicer does."""
    return float(np.mean([dice(infer_all(client, model, scan.image_id, upload=scan.image)[1] > 0, true_emphysema(scan)[0] > 0)
                          for scan in tests]))


def run_session(client: Any, strategy: str, pool: dict[str, SourceCase], tests: list[SourceCase], rounds: int,
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    """``rounds`` annotation rounds with ``strategy`` on the app behind ``client`` (its studies are ``pool``).

    Returns per-round lists: ``dice`` (test Dice after the round's training), ``effort_voxels``,
    ``effort_slices``, ``picks`` (scan ids), ``presegmented_by`` (model), ``labelled`` (final labels
    in the datastore after the save), ``selection`` (the strategy's answer: fallbacks, scores),
    ``threshold`` (the emphysema threshold the round's model is cut at) and ``seconds`` ({"select", "presegment", "train", "score"}: lists of wall seconds).
    """
    record: dict[str, Any] = {"dice": [], "effort_voxels": [], "effort_slices": [], "picks": [], "presegmented_by": [],
                              "labelled": [], "selection": [], "train_steps": [], "threshold": [],
                              "seconds": {"select": [], "presegment": [], "train": [], "score": []}}
    for round_index in range(rounds):
        start = time.perf_counter()
        for method in SCORING[strategy]:
            _ok(client.post(f"/scoring/{method}?run_sync=true"), f"scoring {method}")
        answer = _ok(client.post(f"/activelearning/{strategy}", json={}), f"next sample ({strategy})")
        image = answer["id"]
        selected = time.perf_counter()
        model = "emphysema_laa" if round_index == 0 else "emphysema"
        _, presegmentation = infer_all(client, model, image)
        presegmented = time.perf_counter()
        truth, like = true_emphysema(pool[image])
        effort = correction_effort(presegmentation, truth)
        _ok(save_label(client, image, label_bytes(truth, like)), f"saving the label of {image}")
        labelled = len(_ok(client.get("/datastore/?output=train"), "datastore listing"))
        trained_from = time.perf_counter()
        stats = _ok(client.post("/train/emphysema?run_sync=true", json={}), "training")
        trained = time.perf_counter()
        score = held_out_dice(client, "emphysema", tests)
        scored = time.perf_counter()
        for key, value in (("dice", score), ("effort_voxels", effort.voxels), ("effort_slices", effort.slices),
                           ("picks", image), ("presegmented_by", model), ("labelled", labelled),
                           ("selection", answer.get("selection", {})), ("train_steps", stats.get("steps")),
                           ("threshold", stats["threshold"]["threshold"])):
            record[key].append(value)
        for key, seconds in (("select", selected - start), ("presegment", presegmented - selected),
                             ("train", trained - trained_from), ("score", scored - trained)):
            record["seconds"][key].append(round(seconds, 2))
        progress(f"    round {round_index}: {image} pre-segmented by {model}, corrected {effort.voxels} voxels on "
                 f"{effort.slices} slices; {labelled} labelled; test Dice {score:.3f} ({scored - start:.0f} s)")
    return record


def _ok(response: Any, action: str) -> Any:
    """The JSON of a 200 answer; RuntimeError naming ``action`` otherwise."""
    if response.status_code != 200:
        raise RuntimeError(f"{action}: the app answered {response.status_code}: {response.text[:300]}")
    return response.json()

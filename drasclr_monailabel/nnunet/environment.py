"""nnU-Net's environment for the DrasCLR trainers: where ``nnUNet_extTrainer`` must point.

nnU-Net 2.8 finds a ``-tr`` class outside its own package only in the folders listed (separated by
``os.pathsep``) in ``nnUNet_extTrainer``; ``nnUNetPredictor`` uses the same lookup, so the variable
is needed for prediction too.
"""

from __future__ import annotations

import os
from pathlib import Path

EXT_TRAINER_ENV = "nnUNet_extTrainer"


def ext_trainer_folder() -> Path:
    """The folder holding the module that re-exports ``nnUNetTrainerDrasCLR`` and its variants."""
    return Path(__file__).resolve().parent / "ext_trainers"


def ext_trainer_setting(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` value with our folder added (kept first; other folders are kept)."""
    ours = str(ext_trainer_folder())
    others = [p for p in (current or "").split(os.pathsep) if p and p != ours]
    return os.pathsep.join([ours, *others])


def use_drasclr_trainers() -> None:
    """Add our folder to ``nnUNet_extTrainer`` in this process (nnU-Net reads it at each lookup)."""
    os.environ[EXT_TRAINER_ENV] = ext_trainer_setting(os.environ.get(EXT_TRAINER_ENV))

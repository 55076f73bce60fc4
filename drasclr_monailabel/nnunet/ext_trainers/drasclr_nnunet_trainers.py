"""The folder that ``nnUNet_extTrainer`` names: nnU-Net imports every module here by file name and
looks for the ``-tr`` class in it, so this module only re-exports the trainers from their package
module (one class object, whichever way it is found)."""

from drasclr_monailabel.nnunet.trainer import (
    nnUNetTrainerDrasCLR,
    nnUNetTrainerDrasCLR_smoke,
)

__all__ = ["nnUNetTrainerDrasCLR", "nnUNetTrainerDrasCLR_smoke"]

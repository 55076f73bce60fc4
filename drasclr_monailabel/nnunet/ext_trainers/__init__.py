"""Folder for ``nnUNet_extTrainer`` (a package so that it ships in the wheel; see drasclr_nnunet_trainers)."""

"""Print the environment nnU-Net needs to train and predict with the DrasCLR trainers.

nnU-Net finds trainers outside its own package only in the folders listed in nnUNet_extTrainer
(nnU-Net >= 2.8); nnUNetv2_train -tr nnUNetTrainerDrasCLR and nnUNetv2_predict both need it.
DRASCLR_PRETRAINED names the exported encoder that nnUNetTrainerDrasCLR warm-starts from.

Examples:
  eval "$(drasclr nnunet-env)"
  eval "$(drasclr nnunet-env --root ~/nnunet --pretrained runs/pretrain/export)"
  export nnUNet_extTrainer=$(drasclr nnunet-env --ext-trainer-path)
"""

from __future__ import annotations

import argparse

NAME = "nnunet-env"
HELP = "print the export lines for nnUNet_extTrainer (and optionally nnU-Net's folders and DRASCLR_PRETRAINED)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", metavar="DIR", help="also set nnUNet_raw, nnUNet_preprocessed and nnUNet_results under DIR")
    parser.add_argument("--pretrained", metavar="ENCODER",
                        help="exported encoder folder to warm-start from (checked, then printed as DRASCLR_PRETRAINED)")
    parser.add_argument("--ext-trainer-path", action="store_true", help="print only the nnUNet_extTrainer folder")


def run(args: argparse.Namespace) -> int:
    import os
    import shlex
    from pathlib import Path

    from drasclr_monailabel.nnunet.environment import (
        EXT_TRAINER_ENV,
        ext_trainer_folder,
        ext_trainer_setting,
    )

    if args.ext_trainer_path:
        print(ext_trainer_folder())
        return 0
    lines = {EXT_TRAINER_ENV: ext_trainer_setting(os.environ.get(EXT_TRAINER_ENV))}
    if args.root:
        root = Path(args.root).expanduser().resolve()
        lines.update({name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    if args.pretrained:
        from drasclr_monailabel.errors import InputError
        from drasclr_monailabel.models.export import encoder_paths, read_metadata
        from drasclr_monailabel.nnunet.warm_start import PRETRAINED_ENV

        pretrained = Path(args.pretrained).expanduser().resolve()
        if not pretrained.exists():
            raise InputError(pretrained, "does not exist (expected an exported encoder folder)")
        read_metadata(pretrained)
        lines[PRETRAINED_ENV] = str(encoder_paths(pretrained)[0].parent)
    for name, value in lines.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0

"""The nnU-Net bridge: export annotated CT to an nnU-Net raw dataset, train nnU-Net with the DrasCLR
encoder (warm start), and predict with a trained nnU-Net model folder.

Modules: ``sources`` (datastore or manifest cases), ``lung_grid`` (a CT on the export grid),
``export`` (``drasclr export-nnunet``), ``dataset`` (names, channels, dataset.json), ``plans`` and
``network`` (the DrasCLR network inside nnU-Net's plans), ``warm_start`` (encoder-only loading with
a report), ``augmentation`` (intensity augmentation off the coordinate channels), ``trainer``
(``nnUNetTrainerDrasCLR``), ``environment`` and ``ext_trainers`` (``nnUNet_extTrainer``),
``predictor`` (in-process ``nnUNetPredictor`` on a CT). Submodules import torch and nnU-Net; import
them directly.
"""

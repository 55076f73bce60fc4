"""Emphysema segmentation on the DrasCLR encoder: network, checkpoints, fine-tuning, whole-CT inference.

Submodules import torch and the anatomy pipeline; import them directly, e.g.
``from drasclr_monailabel.segmentation.inference import predict_volume``.
"""

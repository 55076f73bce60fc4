"""Anatomy-aware self-supervised pretraining for chest CT, with a MONAI Label emphysema app."""

__version__ = "0.1.0"

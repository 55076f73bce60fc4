"""Anatomy: lung mask, atlas, affine registration to the atlas, landmarks, preprocessing cache."""

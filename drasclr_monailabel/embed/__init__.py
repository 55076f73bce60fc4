"""Embeddings from a pretrained encoder: landmark-level and patient-level (mean over landmarks)."""

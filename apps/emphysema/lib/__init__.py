"""Wiring of the emphysema app: one config module per model (radiology-app layout)."""

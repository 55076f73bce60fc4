"""MONAI Label task classes for the emphysema app: infer, train, active-learning strategies, scoring.

``apps/emphysema`` only wires these together; everything that decides or computes lives here so
that it is importable and tested without a server.
"""

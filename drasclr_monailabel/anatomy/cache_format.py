"""Version of the preprocessing cache, recorded in every ``<id>_qa.json``: a cache written under
another version is redone by ``drasclr preprocess`` and refused by pretraining.

Raised when the layout changes or where landmarks are placed: 2 is the in-plane refinement of
partial scans' registration (``anatomy.registration``), 3 its sagittal tilt; each moves partial
scans' landmarks by a few mm.
"""

CACHE_FORMAT = "drasclr-cache/3"

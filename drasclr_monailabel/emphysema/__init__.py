"""Emphysema quantification (%LAA, Perc15, zones, LAA clusters), pseudo-labels and reports.

Core functions take ``(volume, lungs)`` — a :class:`~drasclr_monailabel.io.CTVolume` and a uint8
lung mask on the same grid (0 outside, 1 right, 2 left) — and work on the native grid.
"""

from drasclr_monailabel.emphysema.cip import to_cip_labelmap
from drasclr_monailabel.emphysema.pseudo_labels import PseudoLabelOptions, laa_pseudo_labels
from drasclr_monailabel.emphysema.quantify import EmphysemaReport, RegionStats, quantify
from drasclr_monailabel.emphysema.regions import REGIONS, lung_zones

__all__ = [
    "EmphysemaReport",
    "PseudoLabelOptions",
    "REGIONS",
    "RegionStats",
    "laa_pseudo_labels",
    "lung_zones",
    "quantify",
    "to_cip_labelmap",
]

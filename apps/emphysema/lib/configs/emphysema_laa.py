"""``emphysema_laa``: LAA-950 pseudo-label, a useful first segmentation before any training (infer only)."""

from lib.configs._base import ModelConfig

from drasclr_monailabel.tasks.factory import laa_tasks


class EmphysemaLaa(ModelConfig):
    factory = staticmethod(laa_tasks)

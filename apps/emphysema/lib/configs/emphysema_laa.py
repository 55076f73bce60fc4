"""``emphysema_laa``: LAA-950 pseudo-label, a useful first segmentation before any training (infer only)."""

from drasclr_monailabel.tasks.factory import laa_tasks
from lib.configs._base import ModelConfig


class EmphysemaLaa(ModelConfig):
    factory = staticmethod(laa_tasks)

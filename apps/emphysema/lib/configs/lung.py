"""``lung``: right/left lung mask with lung volumes and densitometry (infer only)."""

from drasclr_monailabel.tasks.factory import lung_tasks
from lib.configs._base import ModelConfig


class Lung(ModelConfig):
    factory = staticmethod(lung_tasks)

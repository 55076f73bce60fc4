"""``lung``: right/left lung mask with lung volumes and densitometry (infer only)."""

from lib.configs._base import ModelConfig

from drasclr_monailabel.tasks.factory import lung_tasks


class Lung(ModelConfig):
    factory = staticmethod(lung_tasks)

"""``emphysema``: segmentation model on the pretrained DrasCLR encoder (infer, train, scoring, strategies)."""

from drasclr_monailabel.tasks.factory import emphysema_tasks
from lib.configs._base import ModelConfig


class Emphysema(ModelConfig):
    factory = staticmethod(emphysema_tasks)

"""``emphysema``: segmentation model on the pretrained DrasCLR encoder (infer, train, scoring, strategies)."""

from lib.configs._base import ModelConfig

from drasclr_monailabel.tasks.factory import emphysema_tasks


class Emphysema(ModelConfig):
    factory = staticmethod(emphysema_tasks)

"""The shape every model config shares: build the model's tasks once, hand them to the app."""

from collections.abc import Callable
from typing import Any

from monailabel.interfaces.config import TaskConfig

from drasclr_monailabel.tasks.factory import ModelTasks


class ModelConfig(TaskConfig):
    """A TaskConfig whose tasks come from one factory of :mod:`drasclr_monailabel.tasks.factory`."""

    factory: Callable[..., ModelTasks]

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.tasks = type(self).factory(kwargs["resolved"], kwargs["lung_cache"])
        self.labels = self.tasks.infer.labels

    def infer(self):
        return self.tasks.infer

    def trainer(self) -> Any | None:
        return self.tasks.trainer

    def strategy(self):
        return self.tasks.strategies or None

    def scoring_method(self):
        return self.tasks.scoring or None

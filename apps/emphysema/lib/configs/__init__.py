"""One :class:`~monailabel.interfaces.config.TaskConfig` per model, by model name."""

from lib.configs.emphysema import Emphysema
from lib.configs.emphysema_laa import EmphysemaLaa
from lib.configs.lung import Lung

CONFIGS = {"emphysema": Emphysema, "lung": Lung, "emphysema_laa": EmphysemaLaa}

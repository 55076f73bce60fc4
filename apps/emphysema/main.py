"""MONAI Label app: emphysema pre-segmentation, correction, fine-tuning while annotating, next-scan choice.

Start it with

    monailabel start_server --app apps/emphysema --studies <folder of CT scans> \
        --conf pretrained <exported encoder folder>

Models: ``emphysema`` (segmentation on the pretrained DrasCLR encoder; infer + train),
``lung`` (lung mask) and ``emphysema_laa`` (LAA-950 pseudo-label). Strategies: ``random``,
``first``, ``epistemic``, ``diversity``, ``hybrid``. Options: docs/admin-guide.md. All logic
lives in :mod:`drasclr_monailabel.tasks`; this file only wires it into MONAI Label.
"""

import logging
import sys
from typing import Any

import lib.configs
import requests
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp

import drasclr_monailabel
from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.tasks.background import is_background_task_process, lower_priority, spawn_background_tasks_at
from drasclr_monailabel.tasks.conf import connect_hint, parse_app_conf, resolve_app_conf
from drasclr_monailabel.tasks.datastore import EmphysemaDatastore
from drasclr_monailabel.tasks.dicomweb import dicomweb_datastore
from drasclr_monailabel.tasks.guards import require_infer_image, require_known
from drasclr_monailabel.tasks.http import CONFLICT, refuse, without_server_paths
from drasclr_monailabel.tasks.infer import LungMaskCache
from drasclr_monailabel.tasks.model_store import TrainingBusy
from drasclr_monailabel.tasks.routes import install as install_checked_routes
from drasclr_monailabel.tasks.strategies import FirstStrategy, RandomStrategy

logger = logging.getLogger(__name__)


class EmphysemaApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        try:
            self.resolved = resolve_app_conf(parse_app_conf(conf), app_dir, studies)
        except ConfigError as exc:
            logger.error(f"emphysema app cannot start: {exc}")
            raise
        logger.info(f"emphysema app: {self.resolved.pretrained_reason}; device {self.resolved.device}")
        if is_background_task_process():  # training, scoring or batch infer: annotators' requests come first
            logger.info(f"background task runs at nice {lower_priority(self.resolved.conf.background_nice)}")
        elif "monailabel.app" in sys.modules:  # the server: its background tasks start at low priority
            spawn_background_tasks_at(self.resolved.conf.background_nice)
        lung_cache = LungMaskCache()
        self.models = {}
        for name in self.resolved.conf.models:
            config = lib.configs.CONFIGS[name]()
            config.init(name, str(self.resolved.model_dir), conf, None, resolved=self.resolved, lung_cache=lung_cache)
            self.models[name] = config
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="drasclr emphysema",
            description="Emphysema segmentation on an anatomy-aware pretrained encoder, fine-tuned while you annotate",
            version=drasclr_monailabel.__version__,
            labels=self.resolved.labels,
        )
        self._auto_update_scoring = self.resolved.conf.auto_update_scoring and bool(self._scoring_methods)
        self.datastore_changes_allowed = self.resolved.conf.allow_datastore_changes
        if "monailabel.app" in sys.modules:  # the server (not a training subprocess): check requests first
            install_checked_routes(sys.modules["monailabel.app"].app)

    def on_init_complete(self):
        super().on_init_complete()
        logger.info(connect_hint(settings.MONAI_LABEL_SERVER_PORT, self.resolved))

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return dicomweb_datastore(self.studies, self.resolved)
        return EmphysemaDatastore(
            self.studies,
            self.resolved.state_dir,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            label_names=self.resolved.conf.labels,
        )

    def init_infers(self):
        return {name: config.infer() for name, config in self.models.items()}

    def init_trainers(self):
        return {name: config.trainer() for name, config in self.models.items() if config.trainer()}

    def init_strategies(self):
        reserve = self.resolved.conf.reserve_seconds
        strategies = {"random": RandomStrategy(reserve, seed=self.resolved.conf.seed), "first": FirstStrategy(reserve)}
        for config in self.models.values():
            strategies.update(config.strategy() or {})
        return strategies

    def init_scoring_methods(self):
        methods = {}
        for config in self.models.values():
            methods.update(config.scoring_method() or {})
        return methods

    def info(self):
        info = super().info()
        # Names ordered by label value: OHIF's MONAI Label panel reads a list (a dict breaks it);
        # 3D Slicer takes either, and each model's own labels stay {name: value}.
        info["labels"] = list(self.resolved.labels)
        # Names, not server paths: any client may read /info/.
        info["drasclr"] = {
            "pretrained": self.resolved.pretrained.name if self.resolved.pretrained else None,
            "network": self.resolved.conf.network if self.resolved.conf.backend == "native" else self.resolved.conf.backend,
            "device": self.resolved.device,
        }
        return info

    def infer(self, request: dict[str, Any], datastore=None):
        require_known("model", request.get("model"), self._infers)
        store = datastore or self.datastore()
        image = request.get("image")
        known = isinstance(image, str) and image in store.list_images()
        require_infer_image(image, known, self._sessions.store_path if self._sessions else None)
        result = super().infer(request, datastore)
        result["params"] = without_server_paths(result.get("params"))
        return result

    def train(self, request: dict[str, Any]):
        require_known("model", request.get("model"), self._trainers)
        try:
            return super().train(request)
        except TrainingBusy as exc:
            raise refuse(CONFLICT, str(exc)) from None

    def check_train_request(self, model: str, params: dict[str, Any]) -> None:
        """HTTP 404 for an unknown model, 400 for bad options: before any task starts or is found busy."""
        require_known("model", model, self._trainers)
        check = getattr(self._trainers[model], "check_request", None)
        if check:
            check(params)

    def check_scoring_request(self, method: str) -> None:
        require_known("scoring method", method, self._scoring_methods)

    def next_sample(self, request: dict[str, Any]):
        require_known("strategy", request.get("strategy") or "random", self._strategies)
        return super().next_sample(request)

    def scoring(self, request: dict[str, Any], datastore=None):
        require_known("scoring method", request.get("method"), self._scoring_methods)
        return super().scoring(request, datastore)

    def bundle_path(self, model):
        # MONAI Label calls this in the server process before it starts a background training
        # subprocess: the one place where an unknown model can be refused with a 404 in time.
        if model is not None:
            require_known("model", model, self._trainers)

    def _local_request(self, url, params, action):
        # Outside the server (a training subprocess), MONAI Label triggers scoring over HTTP; a
        # server that is gone must not turn a finished training round into an error.
        try:
            return super()._local_request(url, params, action)
        except requests.RequestException as exc:
            logger.warning(f"{action} not triggered ({url}): {exc}")
            return None

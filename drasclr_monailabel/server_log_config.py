"""The logging config handed to ``monailabel start_server --log_config``.

Without ``--log_config``, MONAI Label 0.8.5 fills its packaged ``logging.json`` into a new
``/tmp/tmp*.json`` at every start and never deletes it (``init_log_config``), so each server start
leaks one file. This writes the same config, with the log folder filled in, once into the app's own
``logs/`` folder (where MONAI Label writes ``app.log`` anyway) and returns its path.
"""
from __future__ import annotations

from pathlib import Path

import monailabel

from drasclr_monailabel.utils.atomic import write_text

LOG_FILE = "app.log"


def log_config_path(app: Path) -> Path:
    """Where :func:`server_log_config` puts the log config of the app folder ``app`` (absolute)."""
    return (app / "logs").resolve() / "logging.json"


def server_log_config(app: Path) -> Path:
    """Write ``app/logs/logging.json`` (MONAI Label's own config, logging to ``app/logs/app.log``)
    unless it already holds exactly that; return its path for ``--log_config``."""
    config = log_config_path(app)
    log_dir = config.parent
    template = (Path(monailabel.__file__).parent / "logging.json").read_text()
    # The placeholders sit inside JSON strings: escape backslashes as MONAI Label does.
    text = (template.replace("${LOGDIR}", str(log_dir).replace("\\", "\\\\"))
            .replace("${LOGFILE}", str(log_dir / LOG_FILE).replace("\\", "\\\\")))
    if not config.is_file() or config.read_text() != text:
        log_dir.mkdir(parents=True, exist_ok=True)
        write_text(config, text)
    return config

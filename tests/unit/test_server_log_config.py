"""The log config passed to ``monailabel start_server``: MONAI Label's own, logging into the app folder."""

from __future__ import annotations

import json

from drasclr_monailabel.server_log_config import server_log_config


def test_log_config_logs_into_the_app_folder_and_is_written_once(tmp_path):
    app = tmp_path / "app"
    config = server_log_config(app)
    assert config == (app / "logs" / "logging.json").resolve()
    handlers = json.loads(config.read_text())["handlers"]
    assert handlers["file_handler"]["filename"] == str((app / "logs" / "app.log").resolve())
    assert "${" not in config.read_text()

    written = config.stat().st_mtime_ns
    assert server_log_config(app) == config and config.stat().st_mtime_ns == written

    config.write_text("{}")  # e.g. left by an older version: replaced by this version's config
    server_log_config(app)
    assert json.loads(config.read_text())["handlers"] == handlers

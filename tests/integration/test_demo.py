"""The README's main command, end to end, as someone who installed the wheel runs it: `drasclr
demo`, from a folder that is not the checkout, prepares everything from the real sample CT, writes
the app folder and ends with a MONAI Label server on that folder that answers on its port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVER_START_SECONDS = 240
REPOSITORY = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _info(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info/", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def test_demo_from_the_installed_wheel_prepares_everything_and_serves_the_app(tmp_path: Path, sample_lung1: Path,
                                                                            installed_wheel: Path) -> None:
    workdir = tmp_path / "demo"
    port = _free_port()
    drasclr = installed_wheel / "drasclr"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PATH=os.pathsep.join([str(installed_wheel), os.environ["PATH"]]))
    imported = subprocess.run([str(installed_wheel / "python"), "-c", "import drasclr_monailabel; print(drasclr_monailabel.__file__)"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
    assert imported.startswith(str(installed_wheel.parent)), f"the checkout is importable from the wheel's environment: {imported}"
    command = [str(drasclr), "demo", "--workdir", str(workdir), "--n", "2", "--port", str(port),
               "--set", "train.max_steps=4", "--set", "train.checkpoint_every=2"]
    log = open(tmp_path / "demo.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        info = None
        while time.monotonic() < deadline and process.poll() is None:
            info = _info(port)
            if info is not None:
                break
            time.sleep(3)
        output = (tmp_path / "demo.log").read_text()
        assert info is not None, f"server never answered (exit {process.poll()}):\n{output[-3000:]}"
        assert {"lung", "emphysema_laa"} <= set(info["models"])
        assert "emphysema" in info["trainers"]
        assert "Connect 3D Slicer" in output and f"127.0.0.1:{port}" in output
        server = psutil.Process(process.pid).cmdline()  # the demo process became the server
        assert server[:3] == [str(installed_wheel / "python"), "-m", "monailabel.main"]
        assert server[server.index("--app") + 1] == str(workdir / "app")
        assert Path(server[server.index("--log_config") + 1]) == (workdir / "app" / "logs" / "logging.json").resolve()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    assert (workdir / "encoder" / "encoder.pt").is_file() and (workdir / "encoder" / "encoder.json").is_file()
    assert sorted(p.name for p in (workdir / "studies").glob("*.nii.gz")) == ["synth_0000.nii.gz", "synth_0001.nii.gz"]
    assert not any((workdir / "studies").glob("labels/final/*")), "the demo datastore must start unlabelled"
    assert (workdir / "app" / "main.py").read_bytes() == (REPOSITORY / "apps" / "emphysema" / "main.py").read_bytes()
    assert (workdir / "app" / "lib" / "configs" / "emphysema.py").is_file()

    plan = subprocess.run([str(drasclr), "pretrain", "--config", "drasclr_demo", "--cache", str(workdir / "cache"),
                           "--out", str(tmp_path / "run"), "--plan"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr  # a shipped recipe by name, outside any checkout
    shipped = yaml.safe_load((REPOSITORY / "configs" / "drasclr_demo.yaml").read_text())
    assert json.loads(plan.stdout)["queue_fill"]["queue_size"] == shipped["moco"]["queue_size"]

    rerun = subprocess.run([str(drasclr), "demo", "--workdir", str(workdir), "--n", "2", "--no-server"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "monailabel start_server" in rerun.stdout
    assert "0 done, 2 skipped" in rerun.stdout + rerun.stderr

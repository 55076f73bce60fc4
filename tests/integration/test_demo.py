"""The README's main command, end to end: `drasclr demo` prepares everything from the real
sample CT and ends with a MONAI Label server that answers on its port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVER_START_SECONDS = 240


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


def test_demo_prepares_everything_and_serves_the_app(tmp_path: Path, sample_lung1: Path) -> None:
    workdir = tmp_path / "demo"
    port = _free_port()
    drasclr = Path(sys.executable).with_name("drasclr")
    command = [str(drasclr), "demo", "--workdir", str(workdir), "--n", "2", "--port", str(port),
               "--set", "train.max_steps=4", "--set", "train.checkpoint_every=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "demo.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    assert (workdir / "encoder" / "encoder.pt").is_file() and (workdir / "encoder" / "encoder.json").is_file()
    assert sorted(p.name for p in (workdir / "studies").glob("*.nii.gz")) == ["synth_0000.nii.gz", "synth_0001.nii.gz"]
    assert not any((workdir / "studies").glob("labels/final/*")), "the demo datastore must start unlabelled"

    rerun = subprocess.run([str(drasclr), "demo", "--workdir", str(workdir), "--n", "2", "--no-server"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "monailabel start_server" in rerun.stdout
    assert "0 done, 2 skipped" in rerun.stdout + rerun.stderr

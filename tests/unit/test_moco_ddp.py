"""DrasCLR pretraining across machines: two torchrun "nodes" on loopback (c10d rendezvous, Gloo).

Every rank must end with the same parameters and queues, and every key of every rank must be in
its landmark's queue exactly once (gathered once, enqueued once). The SLURM template in pretrain/
is run with stand-ins for ``srun`` and ``scontrol`` so that its own torchrun command line starts
two nodes the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
NODES = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def _torchrun() -> str:
    return str(Path(sys.executable).with_name("torchrun"))


def _run_in_groups(commands: list[list[str]], env: dict[str, str], timeout: float) -> list[subprocess.CompletedProcess]:
    """Run ``commands`` concurrently from the repository, each in its own process group; past
    ``timeout`` seconds every group still running (srun, torchrun agents, their workers) is killed,
    so a hung rendezvous or shutdown leaves nothing running, and those commands come back failed
    (-9) with their output so far."""
    processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
                 for command in commands]
    deadline = time.monotonic() + timeout
    results = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for other in processes:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
            output, _ = process.communicate()
            output += f"\n(timed out after {timeout:.0f} s: the processes still running were killed)"
        results.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    return results


def _two_node_command(port: int, target: list[str]) -> list[str]:
    return [_torchrun(), "--nnodes", str(NODES), "--nproc_per_node", "1", "--rdzv_id", "drasclr-test",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", *target]


@pytest.mark.slow
def test_two_nodes_keep_parameters_identical_and_enqueue_every_key_exactly_once(easy_atlas: Path, easy_cache: Path,
                                                                               tmp_path: Path) -> None:
    from tests.unit.test_pretrain import EASY

    steps = 4
    overrides = [*EASY, f"train.max_steps={steps}", "moco.queue_size=64", "train.batch_size=3", "precise_bn.samples=16"]
    command = _two_node_command(_free_port(), ["-m", "tests.unit.ddp_pretrain_worker", str(easy_atlas), str(easy_cache),
                                               str(tmp_path), *overrides])
    results = _run_in_groups([command] * NODES, _environment(), timeout=300)  # as two machines of a cluster would
    for result in results:
        assert result.returncode == 0, _failure_report(result.stdout)
    ranks = sorted((torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(NODES)), key=lambda s: s["rank"])
    assert [state["world_size"] for state in ranks] == [NODES, NODES]
    # Same parameters and (after precise BN) the same BatchNorm statistics on every rank; key
    # networks agree except their running statistics, which each rank gathers over its own share.
    for name, tensor in ranks[0]["network"].items():
        assert torch.equal(tensor, ranks[1]["network"][name]), f"network.{name}"
    for name, tensor in ranks[0]["key_network"].items():
        if "running_" not in name and "num_batches" not in name:
            assert torch.equal(tensor, ranks[1]["key_network"][name]), f"key_network.{name}"
    for name in ("keys", "subjects"):
        assert torch.equal(ranks[0]["queues"][name], ranks[1]["queues"][name])
    queue_keys, queue_subjects = ranks[0]["queues"]["keys"].float(), ranks[0]["queues"]["subjects"]
    expected: Counter = Counter()
    for step in range(steps):
        shares = [state["own_keys"][step] for state in ranks]
        assert len({share["landmark"] for share in shares}) == 1  # one landmark per step on every rank
        assert torch.equal(torch.cat([share["subjects"] for share in shares]), shares[0]["global_subjects"])
        for share in shares:
            landmark = share["landmark"]
            expected.update((landmark, int(s)) for s in share["subjects"])
            similarity = share["keys"] @ queue_keys[landmark].t()
            matches = (similarity > 1 - 1e-5).sum(dim=1)
            assert matches.tolist() == [1] * len(share["subjects"])  # every key of this rank, exactly once
            slots = similarity.argmax(dim=1)
            assert queue_subjects[landmark, slots].tolist() == share["subjects"].tolist()
    written = Counter((landmark, int(s)) for landmark in range(queue_subjects.shape[0])
                      for s in queue_subjects[landmark] if int(s) >= 0)
    assert written == expected  # nothing enqueued twice, nothing missing, nothing else


def _job_id_with_free_port() -> int:
    """A job id whose rendezvous port (the template's 29500 + id % 1000) is free here."""
    for job_id in range(7001, 8000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", 29500 + job_id % 1000))
            except OSError:
                continue
        return job_id
    raise RuntimeError("no free port in 29500-30499")


def _failure_report(output: str) -> str:
    """The first Python traceback of a failed multi-node run and its last lines.

    When one node fails, the other's torchrun agent later loses the rendezvous store and ends with
    a long C++ trace of its own; the tail alone then hides the failure that started it.
    """
    start = output.find("Traceback (most recent call last)")
    first = output[start:start + 4000] if start >= 0 else "(no Python traceback)"
    return f"first traceback:\n{first}\n...\nlast lines:\n{output[-2000:]}"


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.slow
def test_the_slurm_template_runs_two_nodes_with_the_same_torchrun_command_line(easy_atlas: Path, easy_cache: Path,
                                                                              tmp_path: Path) -> None:
    from tests.unit.test_pretrain import EASY

    template = (REPO / "pretrain" / "slurm_multinode.sbatch").read_text()
    launch = re.search(r"srun [^\n]*torchrun \\\n(.*?)\n\s*status=", template, re.S)
    assert launch, "no srun ... torchrun command in the SLURM template"
    flags = re.findall(r"--[a-z_]+", launch.group(1))
    tested = [a for a in _two_node_command(0, []) if a.startswith("--")]
    assert flags[: len(tested)] == tested  # the flags this file's two-node test starts torchrun with
    assert "-m drasclr_monailabel.cli.main pretrain" in " ".join(launch.group(1).split())

    shims = tmp_path / "bin"
    shims.mkdir()
    # srun: run the job step once per node, concurrently; scontrol: the node list and requeue.
    _shim(shims, "srun", 'while [[ $1 == --* ]]; do shift; done\npids=()\n'
                         'for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" & pids+=($!); done\n'
                         'status=0; for p in "${pids[@]}"; do wait $p || status=$?; done; exit $status\n')
    _shim(shims, "scontrol", 'if [[ $1 == show ]]; then echo 127.0.0.1; else echo "$@" >> "$SCONTROL_LOG"; fi\n')
    shutil.copy(Path(sys.executable).with_name("torchrun"), shims / "torchrun")
    overrides = [*EASY, "train.max_steps=3", "moco.queue_size=16", "precise_bn.samples=16", "train.device=cpu",
                 f"data.atlas={easy_atlas}"]
    # One retry, on a fresh port and run folder: once in CI (not reproducible here, also on one
    # loaded core) an agent lost the c10d rendezvous store at the end of a run, a race of
    # torchrun's shutdown between agents on one machine (pytorch/pytorch#123678); once more it
    # hung there instead (one node had exported the encoder) until the timeout. The first failure
    # stays visible as a warning with its first traceback.
    for attempt in (1, 2):
        job_id = str(_job_id_with_free_port())
        env = {**_environment(), "PATH": f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}", "SLURM_NNODES": str(NODES),
               "SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_GPUS_ON_NODE": "1",
               "SCONTROL_LOG": str(tmp_path / f"scontrol{attempt}.log")}
        run_dir = tmp_path / f"run{attempt}"
        result, = _run_in_groups([["bash", str(REPO / "pretrain" / "slurm_multinode.sbatch"), "configs/drasclr_demo.yaml",
                                   str(easy_cache), str(run_dir), *[a for o in overrides for a in ("--set", o)]]], env, timeout=150)
        if result.returncode == 0 or attempt == 2:
            break
        warnings.warn("two-node SLURM run failed once, retrying: " + _failure_report(result.stdout))
    assert result.returncode == 0, _failure_report(result.stdout)
    assert (run_dir / "encoder.json").is_file()
    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)
    assert final["world_size"] == NODES and final["step"] == 3
    assert not (tmp_path / f"scontrol{attempt}.log").exists()  # finished: no requeue

"""Background tasks lower the priority of every thread they have, and only in MONAI Label's task subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from drasclr_monailabel.tasks.background import is_background_task_process, lower_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def test_every_thread_including_earlier_ones_is_lowered():
    # A nice value cannot be raised back by an unprivileged process: measure in a child process.
    script = textwrap.dedent("""
        import os, threading
        from drasclr_monailabel.tasks.background import lower_priority
        started, stop = threading.Event(), threading.Event()
        tid = []
        def worker():
            tid.append(threading.get_native_id()); started.set(); stop.wait()
        thread = threading.Thread(target=worker); thread.start(); started.wait()
        before = os.getpriority(os.PRIO_PROCESS, tid[0])
        main = lower_priority(12)
        later = []
        late = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, 0))); late.start(); late.join()
        again = lower_priority(5)  # never raises priority back
        print(before, main, os.getpriority(os.PRIO_PROCESS, tid[0]), later[0], again)
        stop.set(); thread.join()
    """)
    before, *after = (int(v) for v in subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                      check=True).stdout.split())
    assert after == [max(before, 12)] * 4  # main thread, the earlier thread, a later thread, after asking for less


def test_out_of_range_niceness_is_refused():
    with pytest.raises(ValueError, match="between 0 and 19"):
        lower_priority(20)


def test_only_monai_labels_task_runner_counts_as_background(monkeypatch):
    assert not is_background_task_process()  # pytest
    monkeypatch.setattr(sys, "argv", ["/venv/lib/python3.11/site-packages/monailabel/interfaces/utils/app.py", "-m", "train"])
    assert is_background_task_process()
    monkeypatch.setattr(sys, "argv", ["/venv/bin/monailabel", "start_server"])
    assert not is_background_task_process()


def test_server_forks_task_subprocesses_at_low_priority_from_their_first_instruction():
    # MONAI Label's executors are module globals: install them in a fresh interpreter.
    script = textwrap.dedent("""
        import os, subprocess, sys
        from monailabel.utils.async_tasks import utils
        from drasclr_monailabel.tasks.background import spawn_background_tasks_at
        installed = spawn_background_tasks_at(15)
        again = spawn_background_tasks_at(3)  # existing executors are kept
        child = [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"]
        nices = [int(utils.background_executors[m].submit(subprocess.check_output, child).result()) for m in installed]
        print(",".join(installed), len(again), os.getpriority(os.PRIO_PROCESS, 0), *nices)
    """)
    methods, again, server, *children = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                       check=True).stdout.split()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert methods == "train,scoring,batch_infer" and again == "0"
    assert int(server) == base  # the thread answering requests keeps its priority
    assert [int(n) for n in children] == [max(base, 15)] * 3

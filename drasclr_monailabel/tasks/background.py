"""Background work yields the CPU to the annotators' requests.

MONAI Label runs training, scoring and batch inference in a subprocess of the server
(``python -m monailabel.interfaces.utils.app -m train ...``), while the server answers the
annotators' ``/infer`` requests. On a workstation both want the same cores. Background work runs
at a low scheduling priority (Unix nice), so when an infer and a background round compete, the
kernel gives the cores to the infer (at nice 19 a busy thread weighs 15 against a normal thread's
1024 in Linux's scheduler) and the background round uses whatever is left:

* the server forks each task subprocess from a thread that already runs at the low priority, so
  the subprocess starts there (its imports take seconds of CPU, right when the annotator asks for
  the new model's pre-segmentation);
* the subprocess lowers every thread it has once more (for a subprocess that a server without
  this app started).

Measured in ``benchmarks/app_latency.py`` (docs/benchmarks.md, "MONAI Label app").
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

logger = logging.getLogger(__name__)

TASK_RUNNER = "monailabel/interfaces/utils/app.py"
"""The module MONAI Label runs as ``python -m`` for a background task (``sys.argv[0]`` there)."""

MAX_NICE = 19

BACKGROUND_METHODS = ("train", "scoring", "batch_infer")
"""MONAI Label's background task kinds; each has its own one-thread executor that forks its subprocesses."""


def is_background_task_process() -> bool:
    """True in the subprocess MONAI Label starts for a training, scoring or batch-infer task;
    False in the server, a test or a script."""
    return Path(sys.argv[0]).as_posix().endswith(TASK_RUNNER)


def lower_priority(niceness: int) -> int:
    """Raise the nice value of every thread of this process to at least ``niceness`` (0-19).

    Linux keeps a nice value per thread and new threads inherit their creator's, so threads that
    already exist (e.g. a thread pool started while the app was built) are lowered one by one.
    Never raises priority (an unprivileged process could not). Returns the main thread's nice value.
    """
    _check_niceness(niceness)
    for thread in _thread_ids():
        try:
            _lower(thread, niceness)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    return os.getpriority(os.PRIO_PROCESS, 0)


def spawn_background_tasks_at(niceness: int) -> list[str]:
    """In the server: make MONAI Label fork its task subprocesses at ``niceness`` (0-19) from birth.

    MONAI Label starts each task from a one-thread executor per kind, created on the first task
    (``monailabel.utils.async_tasks.utils.background_executors``). On Linux a nice value belongs to
    a thread, and a forked process inherits the forking thread's. So executors whose thread runs at
    ``niceness`` start every subprocess there, and the server's other threads, which answer
    requests, keep their priority. Only the executor thread is lowered: it waits on the
    subprocess and relays its log lines. Executors that already exist are left alone; elsewhere
    than Linux nothing changes (a nice value there is the whole process's).

    Returns:
        The task kinds whose executor was installed.
    """
    _check_niceness(niceness)
    if not sys.platform.startswith("linux"):
        return []
    from monailabel.utils.async_tasks import utils

    installed = []
    for method in BACKGROUND_METHODS:
        if utils.background_executors.get(method) is None:
            utils.background_executors[method] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"monailabel-{method}",
                initializer=lambda: _lower(threading.get_native_id(), niceness))
            installed.append(method)
    return installed


def _check_niceness(niceness: int) -> None:
    if not 0 <= niceness <= MAX_NICE:
        raise ValueError(f"niceness must be between 0 and {MAX_NICE}, got {niceness}")


def _lower(thread: int, niceness: int) -> None:
    """Raise one thread's nice value to ``niceness`` if it is lower (never raises priority)."""
    if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
        os.setpriority(os.PRIO_PROCESS, thread, niceness)


def _thread_ids() -> list[int]:
    """Kernel ids of this process's threads (Linux: /proc/self/task); elsewhere the process itself."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]

"""Background work yields the CPU to the annotators' requests.

MONAI Label runs training, scoring and batch inference in a subprocess of the server
(``python -m monailabel.interfaces.utils.app -m train ...``), while the server answers the
annotators' ``/infer`` requests. On a workstation both want the same cores. The subprocess lowers
its own scheduling priority (Unix nice), so when an infer and a background round compete, the
kernel gives the cores to the infer (at nice 19 a busy thread weighs 15 against a normal thread's
1024 in Linux's scheduler) and the background round uses whatever is left. Measured in
``benchmarks/app_latency.py`` (docs/benchmarks.md, "MONAI Label app").
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

TASK_RUNNER = "monailabel/interfaces/utils/app.py"
"""The module MONAI Label runs as ``python -m`` for a background task (``sys.argv[0]`` there)."""

MAX_NICE = 19


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
    if not 0 <= niceness <= MAX_NICE:
        raise ValueError(f"niceness must be between 0 and {MAX_NICE}, got {niceness}")
    for thread in _thread_ids():
        try:
            if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
                os.setpriority(os.PRIO_PROCESS, thread, niceness)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    return os.getpriority(os.PRIO_PROCESS, 0)


def _thread_ids() -> list[int]:
    """Kernel ids of this process's threads (Linux: /proc/self/task); elsewhere the process itself."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]

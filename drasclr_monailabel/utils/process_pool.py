"""Local worker processes that share the machine's cores instead of each using all of them.

Spawned (not forked) so that no worker inherits a parent's threads or open files; each worker
gives SimpleITK ``cpu_count // workers`` threads (ITK would otherwise start one per core in every
worker), keeps the parent's log level, and then runs the caller's ``setup`` (e.g. to keep data
every task needs, sent once per worker rather than once per task).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from multiprocessing.pool import Pool
from typing import Any, Callable


def worker_pool(workers: int, setup: Callable[..., None] | None = None, setup_args: tuple[Any, ...] = ()) -> Pool:
    """A spawn-context pool of ``workers`` processes; ``setup(*setup_args)`` runs once in each
    (``setup`` must be a module-level function and its arguments picklable)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    return context.Pool(workers, initializer=_init_worker, initargs=(threads, logging.getLogger().level, setup, setup_args))


def _init_worker(threads: int, level: int, setup: Callable[..., None] | None, setup_args: tuple[Any, ...]) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if setup is not None:
        setup(*setup_args)

"""One long-lived thread for a server's PyTorch work, so that the process keeps one OpenMP pool.

PyTorch's CPU kernels run on OpenMP, and GNU OpenMP gives every thread that starts parallel work
its own pool of workers, kept for as long as that thread lives. Once a process holds more OpenMP
threads than it has cores, GNU OpenMP stops letting idle workers spin between parallel regions, so
each of the many short regions of a convolution network waits for sleeping workers. A web server
runs requests on a pool of worker threads, and any two of them that ran PyTorch are enough: on
2 cores a 2 x 64^3 forward pass of the emphysema network took 0.20 s on the first thread to use
PyTorch and 0.28 s on the next while the first was alive, and a whole-CT prediction 13 s against
18 s (``benchmarks/torch_threads.py``). Running the server's PyTorch work here keeps one pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from drasclr_monailabel.utils.heap import release_free_heap

T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drasclr-torch")
_worker = threading.local()


def _mark_worker() -> None:
    _worker.active = True


def run_on_torch_thread(function: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``function(*args, **kwargs)`` on the process's PyTorch thread; its result or its exception.

    Calls queue behind each other (on a CPU two requests would share the same cores anyway). A call
    made from the PyTorch thread itself runs at once. After each call the heap memory it freed is
    given back to the system (:func:`~drasclr_monailabel.utils.heap.release_free_heap`).
    """
    if getattr(_worker, "active", False):
        return function(*args, **kwargs)

    def marked() -> T:
        _mark_worker()
        try:
            return function(*args, **kwargs)
        finally:
            release_free_heap()  # the server's resident memory drops back after each piece of work

    return _executor.submit(marked).result()

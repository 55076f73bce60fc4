"""The process's one PyTorch thread: every caller's work runs there, results and errors come back."""

from __future__ import annotations

import threading

import pytest

from drasclr_monailabel.utils.torch_thread import run_on_torch_thread


def test_work_from_many_threads_runs_on_one_thread_and_returns_its_result() -> None:
    seen: list[str] = []
    results: list[int] = []

    def request(value: int) -> None:
        results.append(run_on_torch_thread(lambda: seen.append(threading.current_thread().name) or value * 2))

    threads = [threading.Thread(target=request, args=(value,)) for value in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 2, 4, 6, 8, 10]
    assert len(set(seen)) == 1 and seen[0] != threading.current_thread().name


def test_an_error_reaches_the_caller_and_nested_calls_run_at_once() -> None:
    def failing() -> None:
        raise ValueError("scan.nii.gz: no lungs")

    with pytest.raises(ValueError, match="no lungs"):
        run_on_torch_thread(failing)
    # A call from the PyTorch thread itself must not wait for the thread it runs on.
    assert run_on_torch_thread(lambda: run_on_torch_thread(lambda: threading.current_thread().name)).startswith("drasclr-torch")


def test_freed_heap_goes_back_to_the_system_after_the_work() -> None:
    import sys

    from drasclr_monailabel.utils.heap import release_free_heap

    if not sys.platform.startswith("linux"):
        pytest.skip("malloc_trim is glibc's")

    def resident_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20

    release_free_heap()
    before = resident_mb()
    # 200 MB in 100 kB blocks (below glibc's mmap threshold), every 20th kept: the freed ones are
    # holes between live blocks, heap memory that free() alone keeps resident.
    blocks = [bytearray(b"\x01") * 100_000 for _ in range(2_000)]
    kept = blocks[::20]
    del blocks
    held = resident_mb()
    assert held > before + 100
    assert release_free_heap()
    assert resident_mb() < held - 100
    del kept

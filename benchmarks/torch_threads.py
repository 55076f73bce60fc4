"""PyTorch on a server's request threads vs on one dedicated thread (``utils.torch_thread``).

A web server (MONAI Label's uvicorn) runs each request on one of a pool of worker threads. Every
thread that runs PyTorch CPU work gets its own GNU OpenMP pool, alive as long as the thread; with
more OpenMP threads than cores, idle workers stop spinning between parallel regions and a
convolution network slows down. Each scenario runs in a fresh process with two "request" threads,
the first of which has run the network and stays alive (as the pool's idle threads do) while the
second is timed:

- ``request_threads`` (the baseline, before): each request thread runs the network itself;
- ``torch_thread`` (ours): each request thread hands the work to
  :func:`~drasclr_monailabel.utils.torch_thread.run_on_torch_thread`;
- ``single_thread``: the network on the first thread that ever ran PyTorch (the best case).

Timed work: the emphysema network's forward pass on two 64^3 windows (random weights, mean of
``--repeats``), and with ``--whole-ct`` a whole-CT prediction of the real sample CT lung2
(:func:`~drasclr_monailabel.segmentation.inference.predict_volume`, overlap 0, the app's CPU
setting). Ratios are baseline seconds / ours.

    python benchmarks/torch_threads.py --whole-ct --out benchmarks/results/torch_threads_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import in_fresh_process, machine_info  # noqa: E402

SCENARIOS = ("request_threads", "torch_thread", "single_thread")


def measure(scenario: str, repeats: int, whole_ct: bool) -> dict[str, float]:
    """Seconds of the timed work in ``scenario`` (called in a fresh process)."""
    import torch

    from drasclr_monailabel.segmentation.checkpoint import build_model
    from drasclr_monailabel.utils.torch_thread import run_on_torch_thread

    torch.manual_seed(0)
    model, _ = build_model(device="cpu")
    model.eval()
    windows = torch.randn(2, 4, 64, 64, 64)

    def forward_seconds() -> float:
        with torch.inference_mode():
            model(windows)  # warm-up
            clock = time.perf_counter()
            for _ in range(repeats):
                model(windows)
        return (time.perf_counter() - clock) / repeats

    def whole_ct_seconds() -> float:
        from drasclr_monailabel.data.sample_data import sample_path
        from drasclr_monailabel.io.readers import read_ct
        from drasclr_monailabel.segmentation.inference import predict_volume

        volume = read_ct(sample_path("lung2_image"))
        predict_volume(model, volume, overlap=0.0)  # warm-up (and the lung mask's first run)
        clock = time.perf_counter()
        predict_volume(model, volume, overlap=0.0)
        return time.perf_counter() - clock

    def work() -> dict[str, float]:
        result = {"forward_2x64_seconds": round(forward_seconds(), 4)}
        if whole_ct:
            result["whole_ct_seconds"] = round(whole_ct_seconds(), 2)
        return result

    if scenario == "single_thread":
        return _on_thread(work)
    run: Callable[[Callable[[], Any]], Any] = (lambda f: f()) if scenario == "request_threads" else run_on_torch_thread
    first_done, release = threading.Event(), threading.Event()

    def first_request() -> None:  # runs the network once, then stays alive like an idle pool thread
        run(forward_seconds)
        first_done.set()
        release.wait()

    first = threading.Thread(target=first_request)
    first.start()
    first_done.wait()
    try:
        return _on_thread(lambda: run(work))
    finally:
        release.set()
        first.join()


def _on_thread(function: Callable[[], Any]) -> Any:
    """``function()`` on a new thread (as a server request runs); its result."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(function()))
    thread.start()
    thread.join()
    return box[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes per scenario")
    parser.add_argument("--whole-ct", action="store_true", help="also time a whole-CT prediction of lung2 (about 1 min per scenario)")
    args = parser.parse_args()

    import torch

    from drasclr_monailabel.utils.atomic import write_json

    load_before = os.getloadavg()
    results = {scenario: in_fresh_process(measure, scenario, args.repeats, args.whole_ct) for scenario in SCENARIOS}
    baseline, ours = results["request_threads"], results["torch_thread"]
    ratios = {key: round(baseline[key] / ours[key], 2) for key in ours}
    report = {
        "benchmark": "torch_threads",
        "command": f"python benchmarks/torch_threads.py --out {args.out} --repeats {args.repeats}"
                   + (" --whole-ct" if args.whole_ct else ""),
        "machine": machine_info(load_before),
        "torch_threads": torch.get_num_threads(),
        "seconds": results,
        "ratio_request_threads_over_torch_thread": ratios,
    }
    for scenario, values in results.items():
        print(f"{scenario}: {values}", file=sys.stderr)
    print(f"baseline / ours: {ratios}", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

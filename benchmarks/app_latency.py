"""/infer latency and peak server memory on the real sample CT (CPU), and one fine-tuning round.

A real ``monailabel start_server`` runs the emphysema app on a studies folder holding the two
real sample chest CTs (pyradiomics lung1/lung2, 512 x 512, 5 mm slices). For each model, /infer is
timed over HTTP (first call = cold, then the median of ``--repeats``), while the resident memory
of the server process tree is sampled every 50 ms. Then the ``emphysema_laa`` result of lung1 is
submitted as its final label and one fine-tuning round with the default recipe is timed
(run_sync), then an epistemic scoring run (run_sync, as ``auto_update_scoring`` starts one after
a round: it prepares the unlabelled lung2 into the app's scan store), then /infer of the
fine-tuned ``emphysema`` model on lung2 (the first call loads the new model), then a second round
(its scan comes from the store).

Baselines measured in the same run: the same infer task called directly in this process (no
server, no HTTP, with the same lung-mask cache: the ratio is what MONAI Label adds), the server's idle memory after start
(the ratio is what an infer adds), and for ``/infer/emphysema`` the radiology-app-style MONAI
UNet's load to save on lung2 (benchmarks/inference_speed.py, in a fresh process after the
requests). The encoder is ``--encoder`` if given, otherwise a randomly
initialised encoder of the default architecture (same compute as a pretrained one).

``--interference`` measures instead what background work costs an annotator: for each
``--conf background_nice`` value (19, the default, and 0, background work at the server's
priority, the baseline), a fresh server publishes a model with a short round (lung1's LAA-950
label), times ``/infer/emphysema`` on lung2 and ``/infer/emphysema_laa`` on lung1 idle, then again
while a long training round runs in MONAI Label's background subprocess, then while an
epistemic scoring run does (each stopped afterwards); the slowdown is busy / idle median.
Training steps done by the background round during the timed requests are recorded too (how
much background work still progressed).

``--real-flow`` measures the annotator's flow as Slicer drives it, with the app's defaults
(scoring after every round, background work at nice 19): a round is started in the background
(``POST /train/emphysema``, default recipe); the moment it is done, the app has started its
epistemic scoring run and ``/infer/emphysema`` on lung2 is timed (the first request after the
round: it loads the new model), with whether a scoring subprocess was alive when the request
started and ended, and the peak resident memory of the server process alone and of its whole
tree (scoring included); then one more round samples the tree's proportional set size too (shared
pages counted once; its time is not used: see ``real_flow_request``). ``--repeats`` rounds. The baseline, the MONAI UNet's load to save on
lung2, is timed in the same run once scoring is over (an idle machine: the UNet's best case).

    python benchmarks/app_latency.py --out benchmarks/results/app_latency.json
    python benchmarks/app_latency.py --interference --out benchmarks/results/app_latency_interference.json
    python benchmarks/app_latency.py --real-flow --out benchmarks/results/app_latency_real_flow.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import measure_monai_unet  # noqa: E402
from preprocess import in_fresh_process  # noqa: E402

from drasclr_monailabel.packaged import APP_DIR  # noqa: E402

EPOCH_LINE = re.compile(r"train: epoch (\d+)/")
BACKGROUND_ROUND = {"max_epochs": 1000, "steps_per_epoch": 2}
"""The background round: short epochs, so its progress (one log line per epoch) can be counted."""

SAMPLES = ("lung1_image", "lung2_image")


class MemorySampler:
    """Peak resident memory (bytes) of a process and its children (or the process alone), sampled in a thread.

    ``proportional``: sum proportional set sizes (PSS: a page shared by k processes counts 1/k in
    each) instead of resident set sizes, which count the shared libraries that the server and its
    task subprocess both map once per process. PSS reads /proc/PID/smaps (about 7 ms a process),
    so sample it less often.
    """

    def __init__(self, pid: int, interval_s: float = 0.05, children: bool = True, proportional: bool = False) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.children = children
        self.proportional = proportional
        self.first = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        total = 0
        for proc in [self.process, *(self.process.children(recursive=True) if self.children else [])]:
            try:
                total += proc.memory_full_info().pss if self.proportional else proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self.first = self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def default_encoder(folder: Path) -> Path:
    """A randomly initialised encoder of the default architecture, exported like a pretrained one."""
    import torch

    from drasclr_monailabel.anatomy.atlas import load_default_atlas
    from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
    from drasclr_monailabel.models.export import save_encoder
    from drasclr_monailabel.models.intensity import LUNG_WINDOW

    torch.manual_seed(0)
    architecture = EncoderArchitecture()
    atlas = load_default_atlas()
    save_encoder(folder, DrasclrEncoder(architecture).state_dict(), {
        "method": "drasclr", "architecture": architecture.to_dict(), "atlas": {"id": atlas.atlas_id},
        "intensity": LUNG_WINDOW.to_dict(), "patch_size": 32, "embedding_dim": architecture.embedding_dim,
        "training": {"note": "random initialisation, for timing only"},
    })
    return folder


def start_server(studies: Path, conf: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executable = Path(sys.executable).with_name("monailabel")
    command = [str(executable) if executable.exists() else sys.executable, *([] if executable.exists() else ["-m", "monailabel.main"]),
               "start_server", "--app", str(APP_DIR), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in conf.items():
        command += ["--conf", key, value]
    # MONAI Label's launcher runs ``python`` from PATH: this interpreter's, as if the venv were activated.
    env = {**os.environ, "MONAI_LABEL_TRACKING_ENABLED": "false", "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    with open(log, "wb") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=5).ok:
                return process, url
        except requests.RequestException:
            time.sleep(1)
    raise SystemExit("server did not start in 300 s")


def timed_round(url: str, pid: int) -> dict:
    """One fine-tuning round with the app's defaults (run_sync): seconds, its statistics, peak memory."""
    with MemorySampler(pid) as sampler:
        start = time.perf_counter()
        stats = requests.post(f"{url}/train/emphysema?run_sync=true", json={}, timeout=7200).json()
    return {"seconds": round(time.perf_counter() - start, 1), "stats": stats, "peak_rss_mb": round(sampler.peak / 2**20, 1)}


def timed_infer(url: str, model: str, image: str) -> tuple[float, dict]:
    start = time.perf_counter()
    response = requests.post(f"{url}/infer/{model}?image={image}&output=json", timeout=1800)
    seconds = time.perf_counter() - start
    response.raise_for_status()
    return seconds, response.json()


def direct_infer_seconds(task, path: Path) -> float:
    start = time.perf_counter()
    result_file, _ = task({"image": str(path)})
    seconds = time.perf_counter() - start
    os.unlink(result_file)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--encoder", type=Path, help="exported encoder folder (default: random default architecture)")
    parser.add_argument("--repeats", type=int, default=3, help="warm /infer calls per model (--real-flow: rounds)")
    parser.add_argument("--emphysema-repeats", type=int, default=1, help="warm /infer calls of the fine-tuned model (slow on a CPU)")
    parser.add_argument("--skip-training", action="store_true", help="only time lung and emphysema_laa")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--interference", action="store_true",
                      help="measure infer latency during a background training round, at nice 19 and 0 (see above)")
    mode.add_argument("--real-flow", action="store_true",
                      help="time the first /infer/emphysema after each background round, with the app's scoring running (see above)")
    args = parser.parse_args()
    if args.interference:
        measure_interference(args)
        return
    if args.real_flow:
        measure_real_flow(args)
        return

    from drasclr_monailabel.tasks.infer import LaaInferTask, LungInferTask, LungMaskCache
    from drasclr_monailabel.utils.atomic import write_json

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        studies = copy_studies(tmp_path / "studies")
        encoder = args.encoder or default_encoder(tmp_path / "encoder")
        conf = {"pretrained": str(encoder), "device": "cpu", "auto_update_scoring": "false", "reserve_seconds": "0"}
        process, url = start_server(studies, conf, tmp_path / "server.log")
        report: dict = {"benchmark": "app_latency", "device": "cpu", "cpu_count": os.cpu_count(),
                        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
                        "image": {"id": "lung1", "size": "512x512x48", "spacing_mm": "0.57x0.57x5"}}
        try:
            sampler = MemorySampler(process.pid)
            idle = sampler.current()
            report["server_idle_rss_mb"] = round(idle / 2**20, 1)
            infer: dict = {}
            with sampler:
                for model in ("lung", "emphysema_laa"):
                    cold, _ = timed_infer(url, model, "lung1")
                    warm = [timed_infer(url, model, "lung1")[0] for _ in range(args.repeats)]
                    infer[model] = {"cold_seconds": round(cold, 2), "median_seconds": round(statistics.median(warm), 2)}
            report["peak_rss_mb_lung_laa"] = round(sampler.peak / 2**20, 1)
            cache = LungMaskCache()
            direct = {"lung": LungInferTask(cache), "emphysema_laa": LaaInferTask(["emphysema"], cache)}
            for model, task in direct.items():
                infer[model]["direct_cold_seconds"] = round(direct_infer_seconds(task, studies / "lung1.nrrd"), 2)
                baseline = statistics.median(direct_infer_seconds(task, studies / "lung1.nrrd") for _ in range(args.repeats))
                infer[model]["direct_call_seconds"] = round(baseline, 2)
                infer[model]["ratio_http_to_direct"] = round(infer[model]["median_seconds"] / baseline, 2)
            if not args.skip_training:
                label_lung1_with_laa(url)
                report["finetune_round"] = timed_round(url, process.pid)
                start = time.perf_counter()
                requests.post(f"{url}/scoring/epistemic?run_sync=true", json={}, timeout=7200).raise_for_status()
                report["epistemic_scoring_seconds"] = round(time.perf_counter() - start, 1)
                with MemorySampler(process.pid) as emphysema_sampler:
                    cold, result = timed_infer(url, "emphysema", "lung2")
                    warm = [timed_infer(url, "emphysema", "lung2")[0] for _ in range(args.emphysema_repeats)]
                unet = in_fresh_process(measure_monai_unet, str(studies / "lung2.nrrd"), "cpu")
                infer["emphysema"] = {"image": "lung2", "cold_seconds": round(cold, 2),
                                      "median_seconds": round(statistics.median(warm), 2) if warm else None,
                                      "peak_rss_mb": round(emphysema_sampler.peak / 2**20, 1),
                                      "server_latencies": result.get("latencies"),
                                      "monai_unet_load_to_save_seconds": unet["load_to_save"],
                                      "ratio_cold_to_monai_unet": round(cold / unet["load_to_save"], 2)}
                report["second_round"] = timed_round(url, process.pid)
            report["infer"] = infer
            report["peak_rss_ratio_to_idle"] = round(report["peak_rss_mb_lung_laa"] / report["server_idle_rss_mb"], 2)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


def copy_studies(folder: Path) -> Path:
    """The real sample CTs as a studies folder (``lung1.nrrd``, ``lung2.nrrd``)."""
    from drasclr_monailabel.data.sample_data import fetch_sample_data

    samples = fetch_sample_data(SAMPLES)
    folder.mkdir()
    for name in SAMPLES:
        shutil.copy(samples[name], folder / f"{name.split('_')[0]}.nrrd")
    return folder


def label_lung1_with_laa(url: str) -> None:
    """Submit lung1's LAA-950 pseudo-label as its final label (what a round trains on)."""
    laa = requests.post(f"{url}/infer/emphysema_laa?image=lung1&output=image", timeout=1800)
    laa.raise_for_status()
    requests.put(f"{url}/datastore/label?image=lung1&tag=final", files={"label": ("label.nii.gz", laa.content)},
                 timeout=300).raise_for_status()


def training_steps(url: str) -> int:
    """Optimiser steps the running background round has logged so far (epochs x steps per epoch)."""
    details = requests.get(f"{url}/train/", timeout=30).json().get("details", [])
    epochs = [int(m.group(1)) for line in details for m in [EPOCH_LINE.search(line)] if m]
    return (epochs[-1] if epochs else 0) * BACKGROUND_ROUND["steps_per_epoch"]


def wait_for_training_line(url: str, text: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = requests.get(f"{url}/train/", timeout=30).json()
        if any(text in line for line in task.get("details", [])):
            return
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            raise SystemExit(f"background round ended before '{text}': {task.get('status')}")
        time.sleep(1)
    raise SystemExit(f"'{text}' not seen in {timeout_s} s")


def timed_requests(url: str, repeats: int) -> dict[str, list[float]]:
    """``/infer/emphysema`` on lung2 and ``/infer/emphysema_laa`` on lung1, ``repeats`` times each (seconds)."""
    times: dict[str, list[float]] = {"emphysema": [], "emphysema_laa": []}
    for _ in range(repeats):
        times["emphysema"].append(round(timed_infer(url, "emphysema", "lung2")[0], 2))
        times["emphysema_laa"].append(round(timed_infer(url, "emphysema_laa", "lung1")[0], 2))
    return times


def wait_until_not_running(url: str, kind: str, timeout_s: float = 1800) -> dict:
    """Poll ``GET /{kind}/`` (train or scoring) until no task of that kind is queued or running
    (after a round the app queues a scoring run per method: epistemic, then embedding); the last task."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = requests.get(f"{url}/{kind}/?all=true", timeout=30).json()
        if not any(task.get("status") in ("SUBMITTED", "RUNNING") for task in tasks):
            return tasks[-1] if tasks else {}
        time.sleep(0.5)
    raise SystemExit(f"{kind} still running after {timeout_s} s")


def task_subprocesses(server_pid: int, method: str) -> list[psutil.Process]:
    """The server's background ``method`` subprocesses (``python -m monailabel.interfaces.utils.app -m method``)."""
    found = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        if "monailabel.interfaces.utils.app" in command and method in command:
            found.append(child)
    return found


def cpu_seconds_of(process: psutil.Process) -> float:
    """User + system CPU time of a process; 0 once it has ended."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def wait_for_task_cpu(server_pid: int, method: str, cpu_seconds: float, timeout_s: float = 600) -> None:
    """Wait until the server's background ``method`` subprocess (``... app -m scoring``) has used
    ``cpu_seconds`` of CPU: past its start-up (imports, building the app) and into its work."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(cpu_seconds_of(task) >= cpu_seconds for task in task_subprocesses(server_pid, method)):
            return
        time.sleep(0.5)
    raise SystemExit(f"no busy background {method} subprocess in {timeout_s} s")


def interference_at(nice: int, encoder: Path, workdir: Path, repeats: int) -> dict:
    """Idle and busy infer times on a fresh server whose background tasks run at ``nice``: busy
    during a training round, then during an epistemic scoring run (made long with 200 MC passes)."""
    studies = copy_studies(workdir / "studies")
    conf = {"pretrained": str(encoder), "device": "cpu", "auto_update_scoring": "false", "reserve_seconds": "0",
            "background_nice": str(nice), "epistemic_samples": "200"}
    process, url = start_server(studies, conf, workdir / "server.log")
    try:
        label_lung1_with_laa(url)
        publish = requests.post(f"{url}/train/emphysema?run_sync=true", json={"max_epochs": 1, "steps_per_epoch": 2}, timeout=3600)
        publish.raise_for_status()
        timed_infer(url, "emphysema", "lung2")  # warm-up: lung mask cache, first model load
        idle = timed_requests(url, repeats)
        requests.post(f"{url}/train/emphysema", json=BACKGROUND_ROUND, timeout=60).raise_for_status()
        wait_for_training_line(url, "train: epoch 1/")  # the subprocess is past its preparation and training
        steps_before = training_steps(url)
        training = timed_requests(url, repeats)
        steps_during = training_steps(url) - steps_before
        requests.delete(f"{url}/train/", timeout=120)
        requests.post(f"{url}/scoring/epistemic", timeout=60).raise_for_status()
        wait_for_task_cpu(process.pid, "scoring", cpu_seconds=20)
        scoring = timed_requests(url, repeats)
        scoring_running = requests.get(f"{url}/scoring/", timeout=30).json().get("status") == "RUNNING"
        requests.delete(f"{url}/scoring/", timeout=120)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)

    def slowdown(busy: dict[str, list[float]]) -> dict[str, float]:
        return {model: round(statistics.median(busy[model]) / statistics.median(idle[model]), 3) for model in idle}

    return {"background_nice": nice, "idle_seconds": idle,
            "during_training": {"seconds": training, "slowdown": slowdown(training), "background_steps": steps_during},
            "during_scoring": {"seconds": scoring, "slowdown": slowdown(scoring), "still_running_at_end": scoring_running}}


def real_flow_request(url: str, pid: int, proportional: bool = False) -> dict:
    """One background round with the app's defaults, then at once the timed first ``/infer/emphysema``
    on lung2 while the scoring run the round started goes on; then wait for that run to end.

    ``proportional``: sample the process tree's PSS too, 4 times a second: reading a process's
    smaps takes its memory-map lock, which stalls its allocations, so that request's time is
    not comparable (the other rounds sample resident sizes only).
    """
    start = time.perf_counter()
    requests.post(f"{url}/train/emphysema", json={}, timeout=60).raise_for_status()
    round_task = wait_until_not_running(url, "train")
    if round_task.get("status") != "DONE":
        raise SystemExit(f"background round ended {round_task.get('status')}: {round_task.get('details', [])[-5:]}")
    round_seconds = time.perf_counter() - start
    scoring_at_start = bool(task_subprocesses(pid, "scoring"))
    with contextlib.ExitStack() as samplers:
        tree, server = samplers.enter_context(MemorySampler(pid)), samplers.enter_context(MemorySampler(pid, children=False))
        tree_pss = samplers.enter_context(MemorySampler(pid, interval_s=0.25, proportional=True)) if proportional else None
        seconds, result = timed_infer(url, "emphysema", "lung2")
    scoring_at_end = bool(task_subprocesses(pid, "scoring"))
    scoring = wait_until_not_running(url, "scoring")
    return {"round_seconds_incl_start": round(round_seconds, 1), "infer_seconds": round(seconds, 2),
            "server_latencies": result.get("latencies"),
            "scoring_subprocess_alive": {"request_start": scoring_at_start, "request_end": scoring_at_end},
            "last_scoring_status": scoring.get("status"),
            "peak_rss_mb": {"server_process": round(server.peak / 2**20, 1), "process_tree": round(tree.peak / 2**20, 1)},
            **({"pss_mb_process_tree": {"request_start": round(tree_pss.first / 2**20, 1),
                                        "peak": round(tree_pss.peak / 2**20, 1)}} if tree_pss else {})}


def measure_real_flow(args: argparse.Namespace) -> None:
    from drasclr_monailabel.utils.atomic import write_json

    report: dict = {"benchmark": "app_latency_real_flow", "device": "cpu", "cpu_count": os.cpu_count(),
                    "command": " ".join(["python", "benchmarks/app_latency.py", *sys.argv[1:]]),
                    "image": {"id": "lung2", "note": "pyradiomics lung2, the held-out contrast chest CT"},
                    "load_average_before": os.getloadavg(), "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        studies = copy_studies(tmp_path / "studies")
        encoder = args.encoder or default_encoder(tmp_path / "encoder")
        process, url = start_server(studies, {"pretrained": str(encoder), "device": "cpu", "reserve_seconds": "0"},
                                    tmp_path / "server.log")
        try:
            wait_until_not_running(url, "scoring")  # the scoring run the app starts with the server
            label_lung1_with_laa(url)
            for _ in range(args.repeats):
                report["rounds"].append(real_flow_request(url, process.pid))
                print(json.dumps(report["rounds"][-1]), flush=True)
            report["memory_round"] = real_flow_request(url, process.pid, proportional=True)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        unet = in_fresh_process(measure_monai_unet, str(studies / "lung2.nrrd"), "cpu")
    seconds = [item["infer_seconds"] for item in report["rounds"]]
    report["monai_unet_load_to_save_seconds"] = unet["load_to_save"]
    report["ratio_to_monai_unet"] = {"per_round": [round(s / unet["load_to_save"], 2) for s in seconds],
                                     "median": round(statistics.median(seconds) / unet["load_to_save"], 2)}
    report["load_average_after"] = os.getloadavg()
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


def measure_interference(args: argparse.Namespace) -> None:
    from drasclr_monailabel.utils.atomic import write_json

    report: dict = {"benchmark": "app_latency_interference", "device": "cpu", "cpu_count": os.cpu_count(),
                    "command": " ".join(["python", "benchmarks/app_latency.py", *sys.argv[1:]]),
                    "load_average_before": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        encoder = args.encoder or default_encoder(tmp_path / "encoder")
        for nice in (19, 0):
            workdir = tmp_path / f"nice{nice}"
            workdir.mkdir()
            report["runs"].append(interference_at(nice, encoder, workdir, args.repeats))
            print(json.dumps(report["runs"][-1]), flush=True)
    report["load_average_after"] = os.getloadavg()
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

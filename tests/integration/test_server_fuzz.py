"""Bounded fuzz and soak tests of a real ``monailabel start_server`` with the emphysema app.

Fuzz: a few hundred malformed requests, seeded, over every endpoint the server lists in its
OpenAPI schema: none may answer 5xx, the datastore index must stay valid JSON after each, and no
file may appear outside the datastore (the server's temporary folder ends empty). Soak: 4
concurrent clients run next sample, inference, label save and training: no 5xx, no lost label
revision, resident memory stable. Figures: docs/benchmarks.md (reliability).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.fixtures.app import AppServer
from tests.integration.test_app_server import wait_for_training
from tests.integration.test_server_hardening import CONF

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FUZZ_REQUESTS = 300
BAD_VALUES = ["", " ", "\x00", "a\x00b", "../../etc/passwd", "/etc/passwd", "%2e%2e%2f", "case_a/../case_b", "x" * 300,
              "-1", "1e309", "NaN", "null", "[]", "{}", "{\"a\":", "\U0001F600", "case_a\n", "final/../../x", "*", "case_a"]
BAD_FORMS = ["", "[1]", "3", "{", "null", "\"s\"", json.dumps({"image": "/etc/passwd"}), json.dumps({"revision": "abc"}),
             json.dumps({"max_epochs": 10**12}), json.dumps({"x" * 100: 1})]
BAD_FILES = [("x.nii.gz", b""), ("x." + "a" * 300, b"x"), ("x.nii.gz", b"\x1f\x8b\x08garbage"), ("../../x.nii.gz", b"x"),
             ("x.txt", b"hello"), ("", b"x"), ("x.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 99999 99999 99999\n\n")]
SKIPPED = {("POST", "/reload")}
"""Endpoints that are not fuzzed: /reload rebuilds the app (tested by MONAI Label)."""


def fill(path: str, rng: random.Random) -> str:
    """``path`` with each ``{name}`` replaced by a bad value (URL-quoted by requests)."""
    def bad(_: re.Match) -> str:
        return quote(rng.choice(BAD_VALUES + ["emphysema", "lung", "magic"]), safe="")

    return re.sub(r"\{[^}]*\}", bad, path)


def malformed_request(method: str, path: str, parameters: list[str], rng: random.Random) -> dict:
    """Keyword arguments of one malformed request to ``method path``."""
    query = {name: rng.choice(BAD_VALUES) for name in parameters if name != "token" and rng.random() < 0.8}
    request = {"method": method, "url": fill(path, rng), "params": query, "timeout": 120}
    if method in ("PUT", "POST"):
        kind = rng.choice(["form", "file", "json", "raw"])
        if kind == "form":
            request["data"] = {rng.choice(["params", "info"]): rng.choice(BAD_FORMS)}
        elif kind == "file":
            request["files"] = {rng.choice(["file", "label", "files"]): rng.choice(BAD_FILES)}
            request["data"] = {"params": rng.choice(BAD_FORMS)}
        elif kind == "json":
            request["data"] = rng.choice(BAD_FORMS)
            request["headers"] = {"Content-Type": "application/json"}
        else:
            request["data"] = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    return request


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_fuzz_every_endpoint_no_5xx_no_leak_index_valid(phantom_studies, tmp_path):
    import requests

    temp = tmp_path / "server-tmp"
    temp.mkdir()
    server = AppServer(phantom_studies, {**CONF, "reserve_seconds": "0"}, phantom_studies.parent, {"TMPDIR": str(temp)})
    try:
        assert server.wait_ready(120), server.tail()
        endpoints = [(method.upper(), path, [p["name"] for p in spec.get("parameters", [])])
                     for path, methods in server.get("/openapi.json").json()["paths"].items() for method, spec in methods.items()]
        endpoints = [e for e in endpoints if (e[0], e[1]) not in SKIPPED]
        outside_before = files_under(phantom_studies.parent) - {f"studies/{f}" for f in files_under(phantom_studies)}
        temp_before = set(temp.iterdir())  # torch's compile cache folder appears at start-up
        rng = random.Random(17)
        failures, leaks, statuses = [], [], {}
        for number in range(FUZZ_REQUESTS):
            method, path, parameters = endpoints[number % len(endpoints)] if number < len(endpoints) else rng.choice(endpoints)
            request = malformed_request(method, path, parameters, rng)
            request["url"] = server.url + request["url"]
            answer = requests.request(**request)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code >= 500:
                failures.append((method, request["url"], request.get("params"), answer.status_code, answer.text[:200]))
            json.loads((phantom_studies / "datastore_v2.json").read_text())
            left = set(temp.iterdir()) - temp_before
            if left:
                leaks.append((method, request["url"], request.get("params"), answer.status_code, sorted(p.name for p in left)))
                temp_before |= left
        outside = files_under(phantom_studies.parent) - {f"studies/{f}" for f in files_under(phantom_studies)}
        new_outside = {f for f in outside - outside_before if not f.startswith("server-")}
        print(f"fuzz: {FUZZ_REQUESTS} requests over {len(endpoints)} endpoints, statuses {sorted(statuses.items())}")
        assert not failures, "\n".join(map(str, failures))
        assert not new_outside and not leaks, (new_outside, leaks)
    finally:
        server.stop()


SOAK_CLIENTS = 4
SOAK_ROUNDS = 25
"""Each client's rounds: next sample, inference, label save, label info, /info/ (5 requests); one
client also starts training twice. 4 x 25 x 5 = 500 requests, plus the checks."""


SOAK_SCANS = ("case_a", "case_b", "case_c")


def server_rss_mb(server: AppServer) -> float:
    """Resident memory of the server's Python process (not its training subprocesses)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if b"start_server" in (status.parent / "cmdline").read_bytes() and os.getpgid(int(status.parent.name)) == server.process.pid:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
                if "python" in fields["Name"]:
                    return int(fields["VmRSS"].split()[0]) / 1024
        except (OSError, ValueError, KeyError):
            continue
    raise AssertionError("server process not found")


def soak_client(server: AppServer, number: int, rss: list[float]) -> tuple[list[tuple], dict[str, int]]:
    """One annotator's rounds; returns the 5xx answers and the labels it saved per image."""
    import requests

    errors, saved = [], {}
    for round_ in range(SOAK_ROUNDS):
        sample = requests.post(f"{server.url}/activelearning/{'first' if number % 2 else 'random'}", json={}, timeout=120)
        # once every scan is labelled there is no next sample ({}): the annotator revises one
        image = sample.json().get("id") or SOAK_SCANS[(number + round_) % len(SOAK_SCANS)]
        inferred = requests.post(f"{server.url}/infer/emphysema_laa?image={image}&output=image", timeout=300)
        answers = [sample, inferred]
        if inferred.status_code == 200:
            answers.append(requests.put(f"{server.url}/datastore/label?image={image}&tag=final", timeout=120,
                                        files={"label": ("label.nii.gz", inferred.content)}))
            if answers[-1].status_code == 200:
                saved[image] = saved.get(image, 0) + 1
        answers.append(requests.get(f"{server.url}/datastore/label/info?label={image}&tag=final", timeout=120))
        answers.append(requests.get(f"{server.url}/info/", timeout=120))
        if number == 0 and round_ in (1, SOAK_ROUNDS // 2):
            # from scratch (no encoder here) the network's BatchNorm needs 2 patches a batch
            answers.append(requests.post(f"{server.url}/train/emphysema", json={"batch_size": 2}, timeout=120))
        if number == 0 and round_ in (2, SOAK_ROUNDS - 1):
            rss.append(server_rss_mb(server))
        errors += [(a.request.method, a.request.url, a.status_code, a.text[:200]) for a in answers if a.status_code >= 500]
    return errors, saved


def test_soak_four_annotators_no_5xx_no_lost_label_memory_stable(phantom_studies, tmp_path):
    import requests

    server = AppServer(phantom_studies, {**CONF, "reserve_seconds": "0"}, phantom_studies.parent, {"TMPDIR": str(tmp_path)})
    try:
        assert server.wait_ready(120), server.tail()
        rss: list[float] = []
        started = time.monotonic()
        with ThreadPoolExecutor(SOAK_CLIENTS) as pool:
            results = list(pool.map(lambda n: soak_client(server, n, rss), range(SOAK_CLIENTS)))
        seconds = time.monotonic() - started
        errors = [e for client_errors, _ in results for e in client_errors]
        saves: dict[str, int] = {}
        for _, saved in results:
            for image, count in saved.items():
                saves[image] = saves.get(image, 0) + count
        trained = wait_for_training(server)
        revisions = {image: requests.get(f"{server.url}/datastore/label/info?label={image}&tag=final", timeout=60).json()["revision"]
                     for image in saves}
        print(f"soak: {SOAK_CLIENTS} clients, {sum(saves.values())} label saves in {seconds:.0f} s, revisions {revisions}, "
              f"training {trained['status']}, "
              f"server RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB")
        assert not errors, errors[:5]
        assert trained["status"] == "DONE", trained
        assert revisions == saves  # every save became a revision: none lost, none doubled
        assert rss[-1] < rss[0] * 1.25 + 50, rss
    finally:
        server.stop()

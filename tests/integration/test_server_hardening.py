"""Client mistakes, refused uploads and destructive requests against the emphysema app in-process.

Each check is one that MONAI Label 0.8.5 alone gets wrong (a 500, a file left in the temporary
folder, an anonymous deletion): the app's checked routes (drasclr_monailabel.tasks.routes) answer
4xx with one line, remove every upload and export, and keep destructive requests off by default.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk

from tests.fixtures.app import FAST_CONF, AppServer, free_port, in_process_app
from tests.fixtures.orthanc import require_orthanc
from tests.integration.test_app_inprocess import label_bytes, save_label

pytestmark = pytest.mark.integration

CONF = {**FAST_CONF, "models": "lung,emphysema_laa,emphysema", "pretrained": "none", "auto_update_scoring": "false"}
LONG_NAME = "label." + "x" * 300


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """A private temporary folder for the server's uploads and exports (tests run in parallel)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def leftovers(folder) -> list[str]:
    """Names in ``folder`` other than torch's compile cache (``torchinductor_<user>``, which torch
    creates in whatever temporary folder is current the first time a process needs it)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("torchinductor_"))


@pytest.fixture
def client(phantom_studies, temp_dir):
    with in_process_app(phantom_studies, CONF) as test_client:
        yield test_client


def zeros_label(studies) -> bytes:
    image = sitk.ReadImage(str(studies / "case_a.nii.gz"))
    return label_bytes(np.zeros(sitk.GetArrayFromImage(image).shape), image)


def assert_refused(response, status: int, reason: str) -> None:
    assert response.status_code == status, (reason, response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and reason in detail and "\n" not in detail, detail


def test_client_mistakes_get_a_4xx_with_one_line(client, phantom_studies, monkeypatch):
    checks = [
        (client.get("/datastore/image?image=case_a%00"), 400, "control characters"),
        (client.post("/infer/lung?image=case_a%00"), 400, "control characters"),
        (client.put("/datastore/label?image=case%00_a", files={"label": ("l.nii.gz", b"x")}), 400, "control characters"),
        (client.post("/infer/lung?image="), 422, "no image given"),
        (client.post("/infer/lung?image=case_a", data={"params": "[1, 2]"}), 400, "'params' must be a JSON object"),
        (client.post("/infer/lung?image=case_a", data={"params": "{not json"}), 400, "'params' is not valid JSON"),
        (save_label_params(client, "[]"), 400, "'params' must be a JSON object"),
        (client.put("/datastore/image/info?image=case_a", data={"info": "[]"}), 400, "'info' must be a JSON object"),
        (client.put("/datastore/label/info?label=case_a&tag=final", data={"info": "3"}), 400, "'info' must be a JSON object"),
        (client.put("/datastore/label?image=case_a", files={"label": (LONG_NAME, zeros_label(phantom_studies))}), 422,
         "suffix too long"),
        (client.put("/datastore/image?image=new", files={"file": (LONG_NAME, b"x")}), 422, "suffix too long"),
        (client.post("/infer/lung", files={"file": (LONG_NAME, b"x")}), 422, "suffix too long"),
    ]
    for response, status, reason in checks:
        assert_refused(response, status, reason)

    import monailabel.utils.async_tasks.task as async_task

    monkeypatch.setattr(async_task, "processes", lambda method: [object()])  # a task is running
    assert_refused(client.post("/train/lung", json={}), 404, "unknown model 'lung'")
    assert_refused(client.post("/scoring/magic", json={}), 404, "unknown scoring method 'magic'")
    assert client.post("/train/emphysema", json={}).status_code == 429  # known model, busy: still 429


def save_label_params(client, params: str):
    return client.put("/datastore/label?image=case_a", files={"label": ("l.nii.gz", b"x")}, data={"params": params})


def test_train_options_are_checked_on_the_async_path(client, monkeypatch):
    import monailabel.utils.async_tasks.task as async_task

    started = []
    monkeypatch.setattr(async_task, "run_background_task", lambda request, method: started.append(request) or {})
    checks = [
        ({"max_epochs": "three"}, "max_epochs"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"batch_size": -1}, "batch_size"),
        ({"max_epochs": 10**12}, "'max_epochs' must be at most"),
        ({"batch_size": 10**6}, "'batch_size' must be at most"),
        ({"patch_size": 4096}, "'patch_size' must be at most"),
    ]
    for options, reason in checks:
        assert_refused(client.post("/train/emphysema", json=options), 400, reason)
    assert not started
    assert client.post("/train/emphysema", json={"max_epochs": 2}).status_code == 200
    assert len(started) == 1 and started[0]["max_epochs"] == 2


def test_training_from_scratch_with_one_patch_per_step_is_a_400(client, phantom_studies):
    """Without a pretrained encoder (this app's conf) a batch of one cannot train BatchNorm: refused, not a 500."""
    label = {"label": ("label.nii.gz", zeros_label(phantom_studies))}
    assert client.put("/datastore/label?image=case_a&tag=final", files=label).status_code == 200
    assert_refused(client.post("/train/emphysema?run_sync=true", json={"batch_size": 1}), 400,
                   "'batch_size' must be at least 2 when the encoder's BatchNorm learns from the fine-tuning batches")


def test_uploads_and_exports_leave_no_file_behind(client, phantom_studies, temp_dir, monkeypatch):
    label = zeros_label(phantom_studies)
    image = (phantom_studies / "case_a.nii.gz").read_bytes()
    assert save_label(client, "case_a", b"not an image").status_code == 422
    assert save_label(client, "nope", label).status_code == 404
    assert client.put("/datastore/image?image=case_a", files={"file": ("a.nii.gz", image)}).status_code == 409
    assert client.put("/datastore/image?image=fake", files={"file": ("f.nii.gz", b"hello")}).status_code == 422
    assert client.post("/infer/liver", files={"file": ("a.nii.gz", image)}).status_code == 404
    assert save_label(client, "case_a", label).status_code == 200
    dataset = client.get("/datastore/dataset")
    assert dataset.status_code == 200 and dataset.content[:2] == b"PK"

    from monailabel.interfaces.utils.app import app_instance

    monkeypatch.setattr(type(app_instance().datastore()), "save_label", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        save_label(client, "case_b", label)
    assert leftovers(temp_dir) == []


def failing(*args, **kwargs):
    raise RuntimeError("disk full")


def test_destructive_requests_are_off_unless_enabled(phantom_studies, temp_dir):
    conf = {key: value for key, value in CONF.items() if key != "allow_datastore_changes"}
    with in_process_app(phantom_studies, conf) as client:
        assert save_label(client, "case_a", zeros_label(phantom_studies)).status_code == 200
        image = (phantom_studies / "case_b.nii.gz").read_bytes()
        assert_refused(client.delete("/datastore/image?id=case_a"), 403, "allow_datastore_changes")
        assert_refused(client.delete("/datastore/?id=case_a"), 403, "allow_datastore_changes")
        assert_refused(client.delete("/datastore/label?id=case_a&tag=final"), 403, "allow_datastore_changes")
        assert_refused(client.put("/datastore/image?image=copy", files={"file": ("c.nii.gz", image)}), 403,
                       "allow_datastore_changes")
        objects = client.get("/datastore/?output=all").json()["objects"]
        assert "final" in objects["case_a"]["labels"] and "copy" not in objects
        assert (phantom_studies / "case_a.nii.gz").exists() and not leftovers(temp_dir)
    history = phantom_studies / ".drasclr" / "label_history" / "final"
    with in_process_app(phantom_studies, CONF) as client:
        assert_refused(client.delete("/datastore/label?id=case_b&tag=final"), 404, "has no 'final' label")
        assert_refused(client.delete("/datastore/label?id=final/../../x&tag=final"), 404, "not in the datastore")
        kept = (phantom_studies / "labels" / "final" / "case_a.nii.gz").read_bytes()
        assert client.delete("/datastore/label?id=case_a&tag=final").status_code == 200
        assert (history / "case_a" / "1.nii.gz").read_bytes() == kept  # the deleted revision is kept
        assert "final" not in client.get("/datastore/?output=all").json()["objects"]["case_a"]["labels"]
        assert_refused(client.delete("/datastore/label?id=case_a&tag=final"), 404, "has no 'final' label")
        assert save_label(client, "case_c", zeros_label(phantom_studies)).status_code == 200
        before = sorted((history / "case_c").glob("*")) if (history / "case_c").is_dir() else []
        current = (phantom_studies / "labels" / "final" / "case_c.nii.gz").read_bytes()
        assert client.delete("/datastore/image?id=case_c").status_code == 200
        assert not (phantom_studies / "case_c.nii.gz").exists()
        added = sorted(set((history / "case_c").glob("*")) - set(before))  # and an image's labels too
        assert [p.read_bytes() for p in added] == [current]


def test_pacs_orthanc_stops_within_seconds_on_sigterm(tmp_path):
    require_orthanc()
    command = [sys.executable, "-m", "drasclr_monailabel.cli.main", "pacs-orthanc", "--storage", str(tmp_path / "orthanc"),
               "--port", str(free_port()), "--password", "test-password"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "Orthanc is running" in process.stdout.readline(), process.stdout.read()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert time.monotonic() - started < 8
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("strategy", ["first", "random"])
def test_first_and_random_hand_different_scans_to_concurrent_annotators(phantom_studies, temp_dir, strategy):
    with in_process_app(phantom_studies, {**CONF, "reserve_seconds": "600"}) as client:
        served = [client.post(f"/activelearning/{strategy}", json={"client_id": f"reader{i}"}).json()["id"] for i in range(3)]
        assert sorted(served) == ["case_a", "case_b", "case_c"], served


def test_infer_reads_no_other_temporary_file_and_answers_show_no_server_path(client, phantom_studies, temp_dir):
    other = temp_dir / "tmpother.nii.gz"  # another client's upload, as MONAI Label names them
    other.write_bytes((phantom_studies / "case_a.nii.gz").read_bytes())
    assert_refused(client.post(f"/infer/lung?image={other}"), 404, "not in the datastore")
    upload = {"file": ("scan.nii.gz", other.read_bytes())}
    assert_refused(client.post("/infer/lung", files=upload, data={"params": json.dumps({"image": str(other)})}), 404,
                   "not in the datastore")
    uploaded = client.post("/infer/lung?output=json", files=upload)
    assert uploaded.status_code == 200, uploaded.text
    assert leftovers(temp_dir) == ["tmpother.nii.gz"]

    server_paths = (str(phantom_studies), str(temp_dir), str(phantom_studies.parent))
    answers = [uploaded, client.post("/infer/lung?image=case_a&output=json"), client.get("/info/"),
               client.post("/activelearning/first", json={}), client.get("/datastore/image/info?image=case_a"),
               client.get("/datastore/?output=train"), client.get("/datastore/?output=all"),
               client.put("/datastore/image?image=fake", files={"file": ("fake.nii.gz", b"hello")})]
    assert save_label(client, "case_a", zeros_label(phantom_studies)).status_code == 200
    answers += [client.get("/datastore/label/info?label=case_a&tag=final"), client.get("/datastore/?output=train")]
    for answer in answers:
        assert not any(path in answer.text for path in server_paths), (answer.request.url, answer.text[:400])


class RealmKey:
    """An RSA realm key whose public half a loopback HTTP server publishes as Keycloak does
    (``GET <realm> -> {"public_key": <base64 DER>}``); :meth:`token` signs access tokens."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        body = json.dumps({"realm": "test", "public_key": base64.b64encode(der).decode()}).encode()

        class Realm(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Realm)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.uri = f"http://127.0.0.1:{self.server.server_port}/realms/test"

    def token(self, *roles: str, expires_in: int = 600, key=None) -> dict[str, str]:
        import jwt

        claims = {"preferred_username": "reader", "realm_access": {"roles": list(roles)}, "exp": int(time.time()) + expires_in}
        return {"Authorization": "Bearer " + jwt.encode(claims, key or self.key, algorithm="RS256")}


@pytest.mark.slow
def test_monai_label_roles_guard_every_endpoint_on_a_real_server(phantom_studies, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    realm = RealmKey()
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm.uri, "TMPDIR": str(tmp_path)}
    server = AppServer(phantom_studies, CONF, phantom_studies.parent, env)
    try:
        # MONAI Label checks each endpoint's one role: a realm gives annotators and admins the lower roles too
        user, annotator = realm.token("monailabel-user"), realm.token("monailabel-user", "monailabel-annotator")
        admin = realm.token("monailabel-user", "monailabel-annotator", "monailabel-admin")
        assert server.wait_ready(120, headers=admin), server.tail()
        label = {"label": ("label.nii.gz", zeros_label(phantom_studies))}
        forged = realm.token("monailabel-admin", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        checks = [
            (server.get("/info/"), 401),
            (server.get("/info/", headers=realm.token("monailabel-admin", expires_in=-60)), 401),
            (server.get("/info/", headers=forged), 401),
            (server.get("/info/", headers=realm.token("monailabel-admin")), 403),  # a role missing
            (server.get("/info/", headers=user), 200),
            (server.post("/activelearning/first", json={}, headers=user), 200),
            (server.put("/datastore/label?image=case_a", files=label, headers=user), 403),
            (server.put("/datastore/label?image=case_a", files=label, headers=annotator), 200),
            (server.post("/train/emphysema", json={"max_epochs": "three"}, headers=annotator), 403),
            (server.post("/train/emphysema", json={"max_epochs": "three"}, headers=admin), 400),
            (requests.delete(f"{server.url}/datastore/label?id=case_a&tag=final", headers=annotator, timeout=60), 403),
            (requests.delete(f"{server.url}/datastore/image?id=case_c", headers=annotator, timeout=60), 403),
            (requests.delete(f"{server.url}/datastore/image?id=case_c", headers=admin, timeout=60), 200),
        ]
        for number, (response, status) in enumerate(checks):
            assert response.status_code == status, (number, response.status_code, response.text[:300])
        assert (phantom_studies / "labels" / "final" / "case_a.nii.gz").exists()
        assert not (phantom_studies / "case_c.nii.gz").exists()
    finally:
        server.stop()
        realm.server.shutdown()


NGINX_CONF = """
worker_processes 1;
error_log {folder}/error.log;
pid {folder}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {folder}/cert.pem;
        ssl_certificate_key {folder}/key.pem;
        client_max_body_size 2g;
        location / {{
            proxy_pass http://127.0.0.1:{app_port};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout 3600s;
            proxy_request_buffering off;
        }}
    }}
}}
"""
"""The reverse proxy of docs/hospital-deployment.md (security), with the test's folders and ports."""


def self_signed_certificate(folder) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
                   .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))


@pytest.mark.slow
def test_slicer_round_through_nginx_with_tls(phantom_studies, tmp_path):
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        reason = "nginx is not installed (sudo bash scripts/nginx.sh install)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide nginx: {reason}")
        pytest.skip(reason)
    folder = tmp_path / "nginx"
    folder.mkdir()
    self_signed_certificate(folder)
    server = AppServer(phantom_studies, CONF, phantom_studies.parent)
    port = free_port()
    (folder / "nginx.conf").write_text(NGINX_CONF.format(folder=folder, port=port, app_port=server.port))
    proxy = subprocess.Popen([nginx, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
                             stderr=subprocess.PIPE, text=True)
    url, verify = f"https://127.0.0.1:{port}", str(folder / "cert.pem")
    try:
        assert server.wait_ready(120), server.tail()
        assert requests.get(f"{url}/info/", verify=verify, timeout=60).json()["name"] == "drasclr emphysema"
        image_id = requests.post(f"{url}/activelearning/first", json={}, verify=verify, timeout=60).json()["id"]
        inferred = requests.post(f"{url}/infer/emphysema_laa?image={image_id}&output=image", verify=verify, timeout=300)
        assert inferred.status_code == 200, inferred.text[:300]
        saved = requests.put(f"{url}/datastore/label?image={image_id}&tag=final", verify=verify, timeout=120,
                             files={"label": ("label.nii.gz", inferred.content)})
        assert saved.status_code == 200, saved.text
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{url}/info/", timeout=30)  # an unknown certificate is refused by default
        assert requests.get(f"{url}/datastore/?output=all", verify=verify, timeout=60).json()["objects"][image_id]["labels"]["final"]
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        server.stop()

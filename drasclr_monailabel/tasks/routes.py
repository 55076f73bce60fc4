"""Stricter versions of MONAI Label's endpoints that take uploads, JSON fields or start tasks.

MONAI Label 0.8.5 answers several client mistakes with a bare 500 (a NUL in an id, an empty
``image=`` on infer, a ``params`` or ``info`` field that is not a JSON object, an upload name
whose suffix is too long for a file name), deletes an upload only after a successful answer,
leaves every dataset zip in the temporary folder, checks train options only once the background
task runs, answers an unknown model with 429 while a task runs, lets anyone delete scans, and
shows server paths in next-sample answers and datastore listings.

:func:`install` puts these routes in front of MONAI Label's own (same paths, same roles, same
handlers underneath): each checks the request first, then calls MONAI Label's handler and runs the
request's clean-up tasks whatever the outcome. A thin ASGI guard refuses control characters in
the path or query and JSON bodies that are not UTF-8, for any request.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from monailabel.config import settings
from monailabel.endpoints import activelearning as ml_activelearning
from monailabel.endpoints import datastore as ml_datastore
from monailabel.endpoints import infer as ml_infer
from monailabel.endpoints import logs as ml_logs
from monailabel.endpoints import scoring as ml_scoring
from monailabel.endpoints import train as ml_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import remove_file
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from drasclr_monailabel.tasks import auth
from drasclr_monailabel.tasks.guards import CURRENT_UPLOAD
from drasclr_monailabel.tasks.http import BAD_REQUEST, NOT_FOUND, UNPROCESSABLE, refuse, without_server_paths

FORBIDDEN = 403
MAX_SUFFIX_CHARS = 32
"""Longest upload name suffix kept (``.nii.gz`` is 7): MONAI Label puts it into a temporary file name."""

ADMIN = settings.MONAI_LABEL_AUTH_ROLE_ADMIN
ANNOTATOR = settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
USER = settings.MONAI_LABEL_AUTH_ROLE_USER

router = APIRouter()


def json_object(name: str, text: str | None) -> dict[str, Any]:
    """The JSON object in form field ``name`` (empty: ``{}``); HTTP 400 for anything else."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise refuse(BAD_REQUEST, f"'{name}' is not valid JSON") from None
    if not isinstance(value, dict):
        raise refuse(BAD_REQUEST, f"'{name}' must be a JSON object, got {type(value).__name__}")
    return value


def check_upload_name(upload: UploadFile | None) -> None:
    """HTTP 422 for an upload name whose suffix cannot be part of a file name."""
    if upload is None or not upload.filename:
        return
    suffix = "".join(pathlib.Path(upload.filename).suffixes)
    if len(suffix) > MAX_SUFFIX_CHARS or "\x00" in suffix:
        raise refuse(UNPROCESSABLE, f"upload name suffix too long or invalid ({len(suffix)} characters; at most {MAX_SUFFIX_CHARS})")


def require_changes_allowed(action: str) -> None:
    """HTTP 403 unless the admin enabled datastore changes (``--conf allow_datastore_changes true``)."""
    if not getattr(app_instance(), "datastore_changes_allowed", False):
        raise refuse(FORBIDDEN, f"{action} is disabled on this server (an admin enables it with --conf allow_datastore_changes true)")


def saved_upload(upload: UploadFile, tasks: BackgroundTasks) -> str:
    """Write ``upload`` to a new temporary file readable by the server only, removed after the request."""
    suffix = "".join(pathlib.Path(upload.filename).suffixes) if upload.filename else ".nii.gz"
    fd, path = tempfile.mkstemp(suffix=suffix)
    tasks.add_task(remove_file, path)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(upload.file, out)
    return path


@contextlib.asynccontextmanager
async def cleaned_up(tasks: BackgroundTasks) -> AsyncIterator[None]:
    """Run the request's clean-up tasks (removal of uploads) also when the handler fails;
    MONAI Label runs them only after a successful answer."""
    try:
        yield
    except BaseException:
        for task in tasks.tasks:
            await task()
        tasks.tasks.clear()
        raise


@router.post("/infer/{model}")
async def infer(background_tasks: BackgroundTasks, model: str, image: str = "", session_id: str = "",
                params: str = Form("{}"), file: UploadFile = File(None), label: UploadFile = File(None),
                output: Optional[ml_infer.ResultType] = None, user: User = Depends(RBAC(USER))):
    """MONAI Label's infer, with ``params`` and upload names checked and uploads always removed. An
    uploaded image is saved here and is the only temporary file the infer guard accepts."""
    json_object("params", params)
    check_upload_name(file)
    check_upload_name(label)
    if not (image or file or session_id):
        raise refuse(UNPROCESSABLE, "no image given: pass ?image=<id>, upload a file or give a session_id")
    async with cleaned_up(background_tasks):
        upload = saved_upload(file, background_tasks) if file else None
        token = CURRENT_UPLOAD.set(upload)
        try:
            return ml_infer.run_inference(background_tasks, model, upload or image, session_id, params, None, label, output)
        finally:
            CURRENT_UPLOAD.reset(token)


@router.put("/datastore/")
@router.put("/datastore/image")
async def add_image(background_tasks: BackgroundTasks, image: Optional[str] = None, params: str = Form("{}"),
                    file: UploadFile = File(...), user: User = Depends(RBAC(ANNOTATOR))):
    """MONAI Label's image upload, when enabled; the upload is removed whatever the answer."""
    require_changes_allowed("uploading images")
    json_object("params", params)
    check_upload_name(file)
    async with cleaned_up(background_tasks):
        return ml_datastore.add_image(background_tasks, image, params, file, user.username)


@router.delete("/datastore/")
@router.delete("/datastore/image")
async def remove_image(id: str, user: User = Depends(RBAC(ADMIN))):
    """MONAI Label's image removal, when enabled."""
    require_changes_allowed("deleting images")
    return ml_datastore.remove_image(id, user.username)


@router.put("/datastore/label")
async def save_label(background_tasks: BackgroundTasks, image: str, params: str = Form("{}"),
                     tag: str = DefaultLabelTag.FINAL.value, label: UploadFile = File(...),
                     user: User = Depends(RBAC(ANNOTATOR))):
    """MONAI Label's label save; the upload is removed whatever the answer."""
    json_object("params", params)
    check_upload_name(label)
    async with cleaned_up(background_tasks):
        return ml_datastore.save_label(background_tasks, image, params, tag, label, user.username)


@router.delete("/datastore/label")
async def remove_label(id: str, tag: str, user: User = Depends(RBAC(ADMIN))):
    """MONAI Label's label removal, when enabled (the datastore keeps the removed revision in the
    label history and answers 404 for a label that is not stored)."""
    require_changes_allowed("deleting labels")
    return ml_datastore.remove_label(id, tag, user.username)


@router.post("/activelearning/{strategy}")
async def next_sample(strategy: str, params: Optional[dict] = None, user: User = Depends(RBAC(USER))):
    """MONAI Label's next sample, without server paths (clients download the scan by id)."""
    return without_server_paths(ml_activelearning.sample(strategy, params, user.username))


@router.get("/datastore/")
async def datastore_listing(output: Optional[ml_datastore.ResultType] = None, user: User = Depends(RBAC(USER))):
    return without_server_paths(ml_datastore.datastore(output))


@router.get("/datastore/image/info")
async def image_info(image: str, user: User = Depends(RBAC(USER))):
    return without_server_paths(ml_datastore.get_image_info(image))


@router.get("/datastore/label/info")
async def label_info(label: str, tag: str, user: User = Depends(RBAC(USER))):
    return without_server_paths(ml_datastore.get_label_info(label, tag))


@router.put("/datastore/image/info")
async def update_image_info(image: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
    json_object("info", info)
    return ml_datastore.update_image_info(image, info, user.username)


@router.put("/datastore/label/info")
async def update_label_info(label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
    json_object("info", info)
    return ml_datastore.update_label_info(label, tag, info, user.username)


@router.put("/datastore/updatelabelinfo", include_in_schema=False)
async def update_label_info_old(label: str, tag: str, params: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
    json_object("params", params)
    return ml_datastore.update_label_info(label, tag, params, user.username)


@router.get("/datastore/dataset")
async def download_dataset(limit_cases: Optional[int] = None, user: User = Depends(RBAC(ANNOTATOR))):
    """The dataset zip, removed from the temporary folder once sent."""
    datastore = app_instance().datastore()
    if not datastore.datalist():
        raise refuse(NOT_FOUND, "no labelled scans yet: the dataset archive would be empty")
    path = datastore.get_dataset_archive(limit_cases)
    return FileResponse(path, media_type="application/zip", filename="dataset.zip",
                        background=BackgroundTask(remove_file, path))


@router.post("/train/", include_in_schema=False)
async def train_all(params: Optional[dict] = None, run_sync: Optional[bool] = False, user: User = Depends(RBAC(ADMIN))):
    """MONAI Label's 'train every model', with each model's options checked first."""
    instance = app_instance()
    for model in instance.info()["trainers"]:
        instance.check_train_request(model, (params or {}).get(model) or {})
    return await _off_the_event_loop(run_sync, ml_train.run, params, run_sync)


@router.post("/train/{model}")
async def train(model: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                enqueue: Optional[bool] = False, user: User = Depends(RBAC(ADMIN))):
    """MONAI Label's train, with the model and the options checked before any task starts."""
    app_instance().check_train_request(model, params or {})
    return await _off_the_event_loop(run_sync, ml_train.run_model, model, params, run_sync, enqueue)


@router.post("/scoring/{method}")
async def scoring(method: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
                  user: User = Depends(RBAC(ANNOTATOR))):
    """MONAI Label's scoring, with the method checked before the busy check."""
    app_instance().check_scoring_request(method)
    return await _off_the_event_loop(run_sync, ml_scoring.run_method, method, params, run_sync)


async def _off_the_event_loop(run_sync: Optional[bool], call: Any, *args: Any) -> Any:
    """``call(*args)``, in a worker thread when ``run_sync`` asks MONAI Label to train or score in the request.

    MONAI Label runs a synchronous round inside the route, which would hold the server's event loop
    for the whole round: every other request (``/info/``, an annotator's infer) waited minutes.
    """
    if run_sync:
        return await run_in_threadpool(call, *args)
    return call(*args)


@router.get("/logs/gpu")
async def gpu_info(user: User = Depends(RBAC(ADMIN))):
    """MONAI Label's nvidia-smi listing; HTTP 404 on a server without it (MONAI Label: 500)."""
    if shutil.which("nvidia-smi") is None:
        raise refuse(NOT_FOUND, "no NVIDIA GPU tools (nvidia-smi) on this server")
    return await ml_logs.gpu_info(user)


async def validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 answer without echoing the input (FastAPI's own handler fails with a 500 on an
    input that is not UTF-8, such as a file sent where JSON is expected)."""
    errors = [{key: value for key, value in error.items() if key != "input"} for error in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=UNPROCESSABLE)


MAX_CHECKED_BODY = 1 << 20
"""JSON bodies up to this size are checked for UTF-8 (train options, next-sample params are small)."""


class RequestGuard:
    """ASGI wrapper: HTTP 400 for a control character in the path or query (a NUL in an id fails
    in ``os.path`` calls with a 500) and for a JSON body that is not UTF-8 (FastAPI answers 500)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _has_control_character(scope):
            await _bad_request("control characters are not allowed in the path or query")(scope, receive, send)
            return
        if _may_be_json(scope):
            body, more = await _read_body(receive)
            if not more and not _is_utf8(body):
                await _bad_request("the request body is not UTF-8 JSON")(scope, receive, send)
                return
            receive = _replay(body, more, receive)
        await self.app(scope, receive, send)


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=BAD_REQUEST)


def _has_control_character(scope: dict) -> bool:
    raw = scope.get("path", "").encode("utf-8", "surrogateescape") + unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))
    return any(byte < 0x20 or byte == 0x7F for byte in raw)


def _may_be_json(scope: dict) -> bool:
    """FastAPI parses a body as JSON when it says so or says nothing."""
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
    return scope.get("method") in ("POST", "PUT", "PATCH") and (not content_type or b"json" in content_type)


async def _read_body(receive: Any) -> tuple[bytes, bool]:
    """The body up to :data:`MAX_CHECKED_BODY` bytes, and whether more follows."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if not more or len(body) > MAX_CHECKED_BODY:
            return body, more


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _replay(body: bytes, more: bool, receive: Any) -> Any:
    """A ``receive`` that first hands back what was read, then the rest of the request."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replay


def install(app: Any) -> None:
    """Put the checked routes in front of MONAI Label's, wrap the app in the control-character
    guard and make token checks work (once per process; routes look the app instance up per request)."""
    auth.install()
    prefix = settings.MONAI_LABEL_API_STR
    if any(getattr(r, "endpoint", None) is infer for r in app.router.routes):
        return
    guarded = APIRouter()
    guarded.include_router(router, prefix=prefix)
    app.router.routes[:0] = guarded.routes
    app.exception_handlers[RequestValidationError] = validation_error
    app.middleware_stack = RequestGuard(app.build_middleware_stack())  # rebuilt: handlers are copied in

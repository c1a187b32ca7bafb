"""`serve`: a fusion model behind an HTTP API (POST /predict, GET /health) and a page to drop photos on (GET /).

The model is loaded once per process. Predictions run one at a time in a worker thread (the face detector is not
thread-safe, and one prediction already uses every thread given to the process); requests wait in a bounded queue
(503 with Retry-After when it is full) and each has a time limit (504). An upload that cannot be read is an error
entry of its image, never a failure of the process."""

import asyncio
import base64
import binascii
import hmac
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from genderfusion.fusion.predict.rows import COLUMNS, FaceOptions, face_rows

PAGE = "page.html"
TOKEN_ENV = "GENDERFUSION_TOKEN"  # the bearer token clients must send, when set (or serve --token)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
WILDCARD = ("0.0.0.0", "::", "[::]")
ROW_COLUMNS = ("image", *COLUMNS)  # image: the upload's index in the request (two uploads may share a name)
log = logging.getLogger(__name__)


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The Host header values answered: the name bound to and loopback's names, plus `extra`; any for a wildcard
    bind (0.0.0.0, ::). A page elsewhere whose DNS name is rebound to 127.0.0.1 sends its own name and is refused."""
    if host in WILDCARD:
        return ["*"]
    return sorted({host, *LOOPBACK, *extra})


@dataclass(frozen=True)
class Limits:
    """What one request may ask: bytes uploaded, pixels per image, images, waiting requests, seconds."""
    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_images: int = 16
    queue: int = 8
    timeout_s: float = 60.0


class RequestError(Exception):
    """A request refused as a whole: an HTTP status and the reason, naming the limit."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def decode_json_images(body: dict) -> list[tuple[str, bytes]]:
    """{"images": [{"name": ..., "data": base64}, ...]} (or a list of base64 strings) -> [(name, bytes)]."""
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise RequestError(422, 'JSON body: expected {"images": [{"name": "a.jpg", "data": "<base64>"}, ...]}')
    out = []
    for i, entry in enumerate(images):
        name, data = (f"image {i}", entry) if isinstance(entry, str) else (
            (str(entry.get("name", f"image {i}")), entry.get("data")) if isinstance(entry, dict) else (None, None))
        if not isinstance(data, str):
            raise RequestError(422, f"JSON body: images[{i}] has no base64 string in 'data'")
        try:  # line breaks and spaces (what the base64 command prints) are not data
            out.append((name, base64.b64decode("".join(data.split()), validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(422, f"JSON body: images[{i}] ({name}): 'data' is not valid base64") from None
    return out


def check_images(images: list[tuple[str, bytes]], limits: Limits) -> None:
    """The request as a whole: some images, not too many, each within the pixel limit (read from its header)."""
    from PIL import Image, UnidentifiedImageError

    if not images:
        raise RequestError(422, "no image in the request: send multipart files (field 'files') or JSON "
                                '{"images": [{"name": ..., "data": <base64>}]}')
    if len(images) > limits.max_images:
        raise RequestError(413, f"{len(images)} images in one request, above the limit of {limits.max_images}")
    for name, data in images:
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Image.DecompressionBombError as exc:  # PIL's own bound, before ours
            raise RequestError(413, f"{name}: {exc}") from None
        except (UnidentifiedImageError, OSError, ValueError):
            continue  # unreadable: its own error entry, not the request's
        if w * h > limits.max_pixels:
            raise RequestError(413, f"{name}: {w}x{h} = {w * h} pixels, above the limit of {limits.max_pixels} "
                                    "pixels per image")


def rows_json(rows: list[dict]) -> list[dict]:
    """Rows with the upload's index and the columns of `predict --images`, NaN as null."""
    return [{c: (None if isinstance(r[c], float) and math.isnan(r[c]) else r[c]) for c in ROW_COLUMNS} for r in rows]


class Predictor:
    """The model, loaded once, and the queue in front of it."""

    def __init__(self, clf, limits: Limits, options: FaceOptions):
        self.clf, self.limits, self.options = clf, limits, options
        self._lock = asyncio.Lock()
        self.waiting = 0

    def _predict(self, images: list[tuple[str, bytes]]) -> list[dict]:
        names, items = [n for n, _ in images], [d for _, d in images]
        return face_rows(self.clf, items, names, (0.45, 0.55), True, 64, "auto", True, self.options)

    async def _run(self, images: list[tuple[str, bytes]]) -> list[dict]:
        await self._lock.acquire()
        task = asyncio.get_running_loop().run_in_executor(None, self._predict, images)
        task.add_done_callback(lambda _: self._lock.release())  # held until the model is free, answered or not
        return await asyncio.shield(task)

    async def __call__(self, images: list[tuple[str, bytes]]) -> list[dict]:
        if self.waiting >= self.limits.queue:
            raise RequestError(503, f"busy: {self.waiting} requests already wait (the queue holds "
                                    f"{self.limits.queue}); retry shortly")
        self.waiting += 1
        try:
            return await asyncio.wait_for(self._run(images), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"no answer within the limit of {self.limits.timeout_s} s (waiting included)"
                               ) from None
        finally:
            self.waiting -= 1


def health(clf, name: str) -> dict:
    from genderfusion import __version__

    from genderfusion.fusion.model.model_file import FORMAT

    return {"status": "ok", "model": name, "format": FORMAT, "sources": clf.source_names_,
            "head": clf.head, "protocol": clf.protocol, "genderfusion": __version__,
            "columns": list(ROW_COLUMNS)}


def create_app(clf, name: str, limits: Limits = Limits(), options: FaceOptions | None = None,
               hosts: list[str] | None = None, token: str | None = None, docs: bool = False):
    """The ASGI app serving `clf` (a loaded FusionClassifier) under `name`. hosts: the Host header values answered
    (default: loopback's names); token: the bearer token /predict and /health require (None: none); docs: serve
    the interactive /docs page (its scripts come from a CDN), else only /openapi.json."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    predictor = Predictor(clf, limits, options or FaceOptions())
    app = FastAPI(title="genderfusion", version=health(clf, name)["genderfusion"],
                  docs_url="/docs" if docs else None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts or allowed_hosts("127.0.0.1"))
    page = (Path(str(files("genderfusion.fusion.serve"))) / PAGE).read_text(encoding="utf-8")

    def refuse(exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else \
            {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.detail}, status_code=exc.status, headers=headers)

    def authorise(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestError(401, "this server needs its token: send the header 'Authorization: Bearer <token>'")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def get_health(request: Request):
        try:
            authorise(request)
        except RequestError as exc:
            return refuse(exc)
        return health(clf, name)

    @app.post("/predict")
    async def predict(request: Request):
        t0 = time.time()
        try:
            authorise(request)
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > limits.max_bytes:
                raise RequestError(413, f"the upload is {int(size)} bytes, above the limit of {limits.max_bytes}")
            images = await _read_images(request, limits)
            check_images(images, limits)
            rows = await predictor(images)
        except RequestError as exc:
            if exc.status == 400:  # a client that went away: one line, no traceback
                log.warning("POST /predict from %s: %s", request.client.host if request.client else "?", exc.detail)
            return refuse(exc)
        return {"model": name, "images": len(images), "rows": rows_json(rows), "seconds": round(time.time() - t0, 3)}

    return app


async def _read_images(request, limits: Limits) -> list[tuple[str, bytes]]:
    """The images of a multipart (any file fields) or JSON (base64) request, at most max_bytes in all."""
    from starlette.requests import ClientDisconnect

    kind = request.headers.get("content-type", "").lower()  # media types are case-insensitive
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_bytes:
                raise RequestError(413, f"the upload is over the limit of {limits.max_bytes} bytes")
    except ClientDisconnect:
        raise RequestError(400, f"the client went away after {len(body)} bytes of its upload") from None
    if not body:
        raise RequestError(422, "empty body: send multipart files (field 'files') or JSON with base64 images")
    if kind.startswith("application/json"):
        from genderfusion.files.json_files import loads

        try:
            return decode_json_images(loads(body, "the body", limits.max_bytes))
        except ValueError as exc:
            raise RequestError(422, str(exc)) from None
    if kind.startswith("multipart/form-data"):
        return await _multipart_images(request, bytes(body), limits)
    raise RequestError(415, f"content type {kind or 'none'}: send multipart/form-data or application/json")


async def _multipart_images(request, body: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    """The file parts of a multipart body: at most max_images, each with a file name."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request as Plain

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Plain(request.scope, replay).form(max_files=limits.max_images)
    except Exception as exc:  # a malformed multipart body, or too many files
        if "maximum number of files" in str(exc).lower():
            raise RequestError(413, f"more than {limits.max_images} images in one request, above the limit of "
                                    f"{limits.max_images}") from None
        raise RequestError(422, f"the multipart body cannot be read ({type(exc).__name__}: {exc})") from None
    unnamed = [k for k, v in form.multi_items() if not isinstance(v, UploadFile)]
    images = [(v.filename or k, await v.read()) for k, v in form.multi_items() if isinstance(v, UploadFile)]
    if not images and unnamed:
        raise RequestError(422, f"the part {unnamed[0]!r} has no filename, so it is not a file: send each image "
                                "as a file part (Content-Disposition: form-data; name=\"files\"; filename=\"a.jpg\")")
    return images


def thread_share(workers: int) -> int:
    """Threads each server process gives its model, so that the processes together use the cores once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


ENV = "GENDERFUSION_SERVE"  # the settings as JSON, for uvicorn's worker processes (app_from_env)


def app_from_settings(s: dict, clf=None):
    """The app of one server process from `serve`'s settings, serving `clf` (else the model they name, loaded)."""
    import torch

    from genderfusion.fusion.predict.submission import load_model

    torch.set_num_threads(s["threads"])
    clf = load_model(s["model"], s["workdir"]) if clf is None else clf
    return create_app(clf, s["model"], Limits(**s["limits"]), FaceOptions(**s["faces"]), s["hosts"],
                      os.environ.get(TOKEN_ENV) or None, s["docs"])


def app_from_env():
    """The app of one of uvicorn's worker processes, from the settings `serve` put in the environment."""
    import json

    return app_from_settings(json.loads(os.environ[ENV]))

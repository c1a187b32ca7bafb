"""`serve`: a fusion model behind an HTTP API (POST /predict, GET /health) and a page to drop photos on (GET /).

The model is loaded once per process. Predictions run one at a time in a worker thread (the face detector is not
thread-safe, and one prediction already uses every thread given to the process); requests wait in a bounded queue
(503 with Retry-After when it is full) and each has a time limit (504). An upload that cannot be read is an error
entry of its image, never a failure of the process."""

import dataclasses
import hmac
import logging
import os
import time
from importlib.resources import files
from pathlib import Path

from genderfusion.fusion.predict.options import PhotoOptions
from genderfusion.fusion.predict.rows import COLUMNS, PhotoPredictor
from genderfusion.fusion.serve.queue import ModelQueue
from genderfusion.fusion.serve.uploads import Limits, RequestError, check_images, read_images

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


def rows_json(rows: list[dict]) -> list[dict]:
    """Rows with the upload's index and the columns of `predict --images` (a missing value is null)."""
    return [{c: r[c] for c in ROW_COLUMNS} for r in rows]


def health(clf, name: str) -> dict:
    from genderfusion import __version__

    from genderfusion.fusion.model.model_file import FORMAT

    return {"status": "ok", "model": name, "format": FORMAT, "sources": clf.source_names_,
            "head": clf.head, "protocol": clf.protocol, "genderfusion": __version__,
            "columns": list(ROW_COLUMNS)}


def create_app(clf, name: str, limits: Limits = Limits(), options: PhotoOptions | None = None,
               hosts: list[str] | None = None, token: str | None = None, docs: bool = False):
    """The ASGI app serving `clf` (a loaded FusionClassifier) under `name`, predicting with `options` (skip_bad is
    always on: an upload that cannot be read, or holds no face, is a row with its error). hosts: the Host header
    values answered (default: loopback's names); token: the bearer token /predict and /health require (None:
    none); docs: serve the interactive /docs page (its scripts come from a CDN), else only /openapi.json."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from genderfusion.fusion.serve.schemas import REFUSALS, Health, Prediction, request_body

    queue = ModelQueue(PhotoPredictor(clf, dataclasses.replace(options or PhotoOptions(), skip_bad=True)), limits)
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

    @app.get("/health", response_model=Health, responses={401: REFUSALS[401]})
    def get_health(request: Request):
        try:
            authorise(request)
        except RequestError as exc:
            return refuse(exc)
        return health(clf, name)

    @app.post("/predict", response_model=Prediction, responses=REFUSALS, openapi_extra={"requestBody": request_body()})
    async def predict(request: Request):
        """Photos in, one row per face out. The body: multipart/form-data with one file part per photo (field
        `files`), or application/json `{"images": [{"name": "a.jpg", "data": "<base64>"}]}`."""
        t0 = time.time()
        try:
            authorise(request)
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > limits.max_bytes:
                raise RequestError(413, f"the upload is {int(size)} bytes, above the limit of {limits.max_bytes}")
            images = await read_images(request, limits)
            check_images(images, limits)
            rows = await queue(images)
        except RequestError as exc:
            if exc.status == 400:  # a client that went away: one line, no traceback
                log.warning("POST /predict from %s: %s", request.client.host if request.client else "?", exc.detail)
            return refuse(exc)
        return {"model": name, "images": len(images), "rows": rows_json(rows), "seconds": round(time.time() - t0, 3)}

    return app


def thread_share(workers: int) -> int:
    """Threads each server process gives its model, so that the processes together use the cores once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


ENV = "GENDERFUSION_SERVE"  # the settings as JSON, for uvicorn's worker processes (app_from_env)


def app_from_settings(s: dict, clf=None):
    """The app of one server process from `serve`'s settings, serving `clf` (else the model they name, loaded)."""
    import torch

    from genderfusion.fusion.model.classifier import FusionClassifier

    torch.set_num_threads(s["threads"])
    clf = FusionClassifier.load(s["model"], s["workdir"]) if clf is None else clf
    return create_app(clf, s["model"], Limits(**s["limits"]), PhotoOptions(**s["options"]), s["hosts"],
                      os.environ.get(TOKEN_ENV) or None, s["docs"])


def app_from_env():
    """The app of one of uvicorn's worker processes, from the settings `serve` put in the environment."""
    import json

    return app_from_settings(json.loads(os.environ[ENV]))

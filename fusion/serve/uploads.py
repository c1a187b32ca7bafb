"""What a request to `serve` uploads: images from a multipart or JSON (base64) body, read within the limits."""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass


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


async def read_images(request, limits: Limits) -> list[tuple[str, bytes]]:
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
        return await multipart_images(request, bytes(body), limits)
    raise RequestError(415, f"content type {kind or 'none'}: send multipart/form-data or application/json")


async def multipart_images(request, body: bytes, limits: Limits) -> list[tuple[str, bytes]]:
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

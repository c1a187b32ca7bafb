"""Decoding images of any mode to RGB uint8 arrays, resized to a square size."""
from __future__ import annotations

import os
import warnings
from typing import IO, Callable, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..errors import BadImageError
from ..workers import worker_pool

ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F …) to RGB: 16-bit values divided by 257 (65535 ->
    255, as libpng and OpenCV scale them), 32-bit float values clipped to 0..255 (PIL's own rule), transparency
    composited on black."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        arr = arr if im.mode == "F" else arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (0, 0, 0))
        bg.paste(rgba, mask=rgba.split()[-1])
        return bg
    return im.convert("RGB")


def load_rgb(path: str | os.PathLike | IO[bytes], size: int | None = None, max_side: int | None = None
             ) -> np.ndarray:
    """Decode one image file to an HWC uint8 RGB array, optionally resized to size×size, or reduced as it is
    decoded so that neither side exceeds max_side (JPEG's draft mode decodes at 1/2, 1/4 or 1/8 scale, then a
    resize). An image of more pixels than PIL.Image.MAX_IMAGE_PIXELS (settable) is refused before it is decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line
            im = Image.open(path)
        with im:
            if limit is not None and im.size[0] * im.size[1] > limit:
                raise BadImageError(path, f"{im.size[0]}x{im.size[1]} pixels, above the limit of {limit} "
                                          "(PIL.Image.MAX_IMAGE_PIXELS: raise it to read such images)")
            if max_side is not None and max(im.size) > max_side:
                im.draft("RGB", (max_side, max_side))
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im))  # a phone photo stands as it was taken
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR, reducing_gap=None)
            elif max_side is not None and max(rgb.size) > max_side:
                scale = max_side / max(rgb.size)
                rgb = rgb.resize((max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale))),
                                 Image.BILINEAR, reducing_gap=None)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (FileNotFoundError, BadImageError):
        raise
    except Image.DecompressionBombError as exc:  # past twice the limit PIL refuses to open the file at all
        raise BadImageError(path, f"{exc} (above the limit of {limit} pixels: PIL.Image.MAX_IMAGE_PIXELS, raise "
                                  "it to read such images)") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from exc


def _load_or_none(args: tuple[str, int | None]) -> tuple[np.ndarray | None, BadImageError | None]:
    path, size = args
    try:
        return load_rgb(path, size), None
    except BadImageError as exc:
        return None, exc


def map_images(fn: Callable, jobs: Sequence, out: np.ndarray, skip_bad: bool = False, workers: int | None = None,
               progress: bool = True, desc: str = "decode") -> list[int]:
    """out[n] = the array fn(jobs[n]) returns as (array, None), in parallel over `workers` processes (chunks of
    64); a job that returns (None, BadImageError) is an error naming its file, or with skip_bad a row of zeros
    listed in the returned indices."""
    from tqdm.auto import tqdm

    bad: list[int] = []
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    with tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 64:
            with worker_pool(workers) as pool:
                _collect(pool.map(fn, jobs, chunksize=64), out, bad, skip_bad, bar)
        else:
            _collect(map(fn, jobs), out, bad, skip_bad, bar)
    return bad


def decode_many(
    paths: Sequence[str | os.PathLike],
    size: int,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "decode",
) -> tuple[np.ndarray, list[int]]:
    """Decode and resize many images in parallel.

    Returns the [N, size, size, 3] uint8 array and the indices of bad images (zeros in the
    array). Without skip_bad the first bad image raises BadImageError naming it.
    """
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    bad = map_images(_load_or_none, [(str(p), size) for p in paths], out, skip_bad, workers, progress, desc)
    return out, bad


def _collect(results, out: np.ndarray, bad: list[int], skip_bad: bool, bar) -> None:
    for n, (arr, err) in enumerate(results):
        if err is not None:
            if not skip_bad:
                raise BadImageError(err.path, f"{err.reason}; rerun with skip_bad=True to exclude it")
            bad.append(n)
        else:
            out[n] = arr
        bar.update(1)


def resize_all(arrays: list[np.ndarray], size: int) -> np.ndarray:
    """Resize each image to size×size exactly as the training image cache does."""
    out = np.empty((len(arrays), size, size, 3), dtype=np.uint8)
    for i, a in enumerate(arrays):
        im = Image.fromarray(a)
        out[i] = np.asarray(im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR,
                                                                           reducing_gap=None))
    return out

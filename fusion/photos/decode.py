"""Turning the inputs of FusionClassifier.predict into RGB uint8 arrays."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from genderfusion.files.paths import special_kind
from genderfusion.extract.data.images import load_rgb, to_rgb
from genderfusion.extract.errors import BadImageError


MAX_SIDE = 1024  # a photo file is reduced to this (long side) as it is decoded: memory per photo stays bounded
DETECT_SIDE = 6144  # the same where faces are found in the photo: the detectors reduce it themselves as they need,
# and faces are cut from it (a 24-px face in a 4000x3000 photo stays 24 px)
KINDS = "a path, the bytes of an image file, a PIL image, an HWC uint8 array or a tensor"
BYTES = (bytes, bytearray, memoryview)


def as_items(images) -> list:
    """The inputs as a list: one image (a path, bytes, a PIL image, a 2-D/3-D array or tensor) or a sequence of
    them (a 4-D array or tensor: a batch)."""
    if images is None:
        raise TypeError(f"images: None; give {KINDS}, or a list of them")
    single = isinstance(images, (str, os.PathLike, Image.Image, *BYTES)) or getattr(images, "ndim", None) in (2, 3)
    if single:
        return [images]
    try:
        return list(images)
    except TypeError:
        raise TypeError(f"images: a {type(images).__name__}; give {KINDS}, or a list of them") from None


def decode_one(item, index: int, max_side: int | None = None) -> np.ndarray:
    """One input (path, bytes of an image file, PIL image, array, tensor) as an HWC uint8 RGB array; errors name
    its index or path. max_side: files are reduced as they are decoded so that neither side exceeds it.

    One rule for every kind of input: an alpha channel is composited on black (an RGBA PIL image and its
    HxWx4 array give the same pixels)."""
    if isinstance(item, (str, os.PathLike)):
        kind = special_kind(item)
        if kind is not None:
            raise BadImageError(str(item), f"{kind}, not an image file; not read")
        if not Path(item).is_file():
            raise FileNotFoundError(f"image {index}: {item} not found" + (" (a broken symbolic link)"
                                                                          if Path(item).is_symlink() else ""))
        return load_rgb(item, max_side=max_side)
    if isinstance(item, BYTES):
        try:
            return load_rgb(io.BytesIO(bytes(item)), max_side=max_side)
        except BadImageError as exc:
            reason = exc.reason if "cannot identify image file" not in exc.reason else \
                f"not an image file that can be read ({len(item)} bytes)"
            raise BadImageError(f"<image {index}>", reason) from None
    if isinstance(item, Image.Image):
        try:
            return np.asarray(to_rgb(ImageOps.exif_transpose(item)), dtype=np.uint8).copy()
        except Exception as exc:  # a lazily opened image decodes here: PIL raises many types for corrupt data
            raise BadImageError(f"<image {index}>", f"{type(exc).__name__}: {exc}") from exc
    if type(item).__module__.startswith("torch"):
        t = item.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)  # CHW -> HWC
        item = t.numpy()
        if item.dtype != np.uint8:  # float tensors in [0, 1]
            if item.size and not np.isfinite(item).all():
                raise ValueError(f"image {index}: the tensor holds {int((~np.isfinite(item)).sum())} NaN or "
                                 "infinite value(s)")
            if item.size and (item.min() < 0 or item.max() > 1):
                raise ValueError(f"image {index}: a float tensor must hold values in [0, 1], found "
                                 f"{item.min():.3g}..{item.max():.3g}; divide by 255, or pass uint8")
            item = (item * 255.0 + 0.5).astype(np.uint8)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image {index}: expected an HWC uint8 array, got dtype {item.dtype} shape {item.shape}")
        if item.size == 0:
            raise ValueError(f"image {index}: an empty array (shape {item.shape})")
        if item.ndim == 2 or item.shape[2] == 1:
            item = np.repeat(item.reshape(item.shape[0], item.shape[1], 1), 3, axis=2)
        if item.shape[2] == 4:
            return np.asarray(to_rgb(Image.fromarray(np.ascontiguousarray(item), "RGBA")), dtype=np.uint8).copy()
        return np.ascontiguousarray(item)
    raise TypeError(f"image {index}: unsupported type {type(item).__name__}; give {KINDS}")


def decode_inputs(images, max_side: int | None = None) -> list[np.ndarray]:
    """A path, bytes of an image file, PIL image, array or tensor (2-D/3-D: one image; 4-D: a batch), or a list
    mixing them -> list of HWC uint8 RGB arrays (files reduced to max_side as they are decoded).

    All inputs are decoded before any is used: one bad input raises an error naming its index or path.
    """
    items = as_items(images)
    out = []
    for i, item in enumerate(items):
        try:
            out.append(decode_one(item, i, max_side))
        except BadImageError as exc:
            raise BadImageError(exc.path, f"image {i}: {exc.reason}") from exc
    if not out:
        raise ValueError("no images given")
    return out

"""sha256 of each image's decoded RGB pixels: equal pixels, whatever the file bytes (exact duplicates)."""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from ..errors import BadImageError
from .dataset import CompetitionData
from .image_cache import cached_array
from .images import load_rgb, map_images
from .workspace import Workspace

DIGEST = 32  # bytes of a sha256


def pixel_digest(path: str | os.PathLike) -> bytes:
    """sha256 over the decoded image's shape and RGB pixels."""
    arr = load_rgb(path)
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).digest()


def _digest_or_error(path: str) -> tuple[np.ndarray | None, BadImageError | None]:
    try:
        return np.frombuffer(pixel_digest(path), np.uint8), None
    except BadImageError as exc:
        return None, exc


def pixel_hashes(paths: Sequence[str | os.PathLike], skip_bad: bool = False, workers: int | None = None,
                 progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """[N, 32] uint8 digests (zeros for a corrupt image with skip_bad, listed in the second value)."""
    out = np.zeros((len(paths), DIGEST), np.uint8)
    bad = map_images(_digest_or_error, [str(p) for p in paths], out, skip_bad, workers, progress, "hash pixels")
    return out, bad


def cached_pixel_hashes(ws: Workspace, data: CompetitionData, split: str = "train", skip_bad: bool = False,
                        progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """The split's pixel digests, cached in `ws/cache/hashes/<split>.npy` and rebuilt when the images change."""
    part = getattr(data, split)

    def build() -> tuple[np.ndarray, dict]:
        arr, bad = pixel_hashes(part.paths, skip_bad=skip_bad, progress=progress)
        return arr, {"bad": bad}

    key = {"dataset_fingerprint": data.fingerprint(labels=False, content=True), "ids_n": len(part), "digest": "sha256"}
    arr, meta = cached_array(ws.root / "cache" / "hashes" / f"{split}.npy", key, part.paths, build, skip_bad,
                             "pixel-hash cache")
    return arr, list(meta["bad"])

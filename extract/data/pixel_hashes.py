"""sha256 of each image's decoded RGB pixels: equal pixels, whatever the file bytes (exact duplicates)."""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from ..errors import BadImageError
from ..workers import worker_pool
from .dataset import CompetitionData
from .image_cache import cached_array
from .images import load_rgb
from .workspace import Workspace

DIGEST = 32  # bytes of a sha256


def pixel_digest(path: str | os.PathLike) -> bytes:
    """sha256 over the decoded image's shape and RGB pixels."""
    arr = load_rgb(path)
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).digest()


def _digest_or_error(path: str) -> tuple[bytes | None, BadImageError | None]:
    try:
        return pixel_digest(path), None
    except BadImageError as exc:
        return None, exc


def pixel_hashes(paths: Sequence[str | os.PathLike], skip_bad: bool = False, workers: int | None = None,
                 progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """[N, 32] uint8 digests (zeros for a corrupt image with skip_bad, listed in the second value)."""
    from tqdm.auto import tqdm

    out = np.zeros((len(paths), DIGEST), np.uint8)
    bad: list[int] = []
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    jobs = [str(p) for p in paths]
    with tqdm(total=len(jobs), desc="hash pixels", unit="img", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 64:
            with worker_pool(workers) as pool:
                results = pool.map(_digest_or_error, jobs, chunksize=64)
                _collect(results, out, bad, skip_bad, bar)
        else:
            _collect(map(_digest_or_error, jobs), out, bad, skip_bad, bar)
    return out, bad


def _collect(results, out: np.ndarray, bad: list[int], skip_bad: bool, bar) -> None:
    for n, (digest, err) in enumerate(results):
        if err is not None:
            if not skip_bad:
                raise BadImageError(err.path, f"{err.reason}; rerun with --skip-bad to exclude it")
            bad.append(n)
        else:
            out[n] = np.frombuffer(digest, np.uint8)
        bar.update(1)


def cached_pixel_hashes(ws: Workspace, data: CompetitionData, split: str = "train", skip_bad: bool = False,
                        progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """The split's pixel digests, cached in `ws/cache/hashes/<split>.npy` and rebuilt when the images change."""
    part = getattr(data, split)

    def build() -> tuple[np.ndarray, dict]:
        arr, bad = pixel_hashes(part.paths, skip_bad=skip_bad, progress=progress)
        return arr, {"bad": bad}

    key = {"dataset_fingerprint": data.fingerprint(labels=False, mtimes=True), "ids_n": len(part), "digest": "sha256"}
    arr, meta = cached_array(ws.root / "cache" / "hashes" / f"{split}.npy", key, part.paths, build, skip_bad,
                             "pixel-hash cache")
    return arr, list(meta["bad"])

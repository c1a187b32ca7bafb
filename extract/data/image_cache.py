"""Decoded, resized images cached on disk so that epochs are not spent on JPEG decoding."""
from __future__ import annotations

import logging

import numpy as np

from ..atomic import atomic_path, read_json, write_json
from ..errors import BadImageError
from .dataset import CompetitionData
from .images import decode_many
from .workspace import Workspace

log = logging.getLogger(__name__)


def cached_images(ws: Workspace, data: CompetitionData, split: str, size: int,
                  skip_bad: bool = False, progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """Return the [N, size, size, 3] uint8 images of a split and the indices of bad images.

    The array is memory-mapped from `ws/cache/images/<split>_<size>.npy` and rebuilt when the
    dataset fingerprint changes.
    """
    part = getattr(data, split)
    path = ws.image_cache(split, size)
    meta_path = path.with_suffix(".json")
    fp = data.fingerprint(labels=False, mtimes=True)  # pixels: not labels, but a replaced file
    if path.exists() and meta_path.exists():
        meta = read_json(meta_path)
        if meta.get("dataset_fingerprint") == fp and meta.get("ids_n") == len(part):
            if meta["bad"] and not skip_bad:
                bad_path = part.paths[meta["bad"][0]]
                raise BadImageError(bad_path, "recorded as corrupt in the image cache; rerun with --skip-bad")
            return np.load(path, mmap_mode="r"), list(meta["bad"])
        log.info("image cache %s is stale (dataset changed); rebuilding", path)
    arr, bad = decode_many(part.paths, size, skip_bad=skip_bad, progress=progress, desc=f"decode {split}@{size}")
    if bad:
        log.warning("skipped %d corrupt image(s): %s", len(bad), [str(part.paths[i]) for i in bad[:5]])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    write_json(meta_path, {"dataset_fingerprint": fp, "ids_n": len(part), "size": size, "bad": bad})
    return np.load(path, mmap_mode="r"), bad


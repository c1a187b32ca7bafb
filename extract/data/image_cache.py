"""Decoded images cached on disk (resized, or made into face chips elsewhere) so that epochs and re-runs are not
spent on decoding."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from genderfusion.files.atomic import atomic_path, write_json
from genderfusion.files.json_files import read_json

from ..errors import BadImageError
from .dataset import CompetitionData
from .images import decode_many
from .workspace import Workspace

log = logging.getLogger(__name__)


def cached_array(path: Path, key: dict, paths: list, build: Callable[[], tuple[np.ndarray, dict]],
                 skip_bad: bool, what: str) -> tuple[np.ndarray, dict]:
    """An image array memory-mapped from `path` and its metadata (`<path>.json`, holding `key` and the indices of
    corrupt images, `bad`), reused while the metadata holds `key`; else build() -> (array, metadata) is saved
    atomically. Without skip_bad, a corrupt image recorded there is an error naming it."""
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = read_json(meta_path)
        if all(meta.get(k) == v for k, v in key.items()):
            if meta["bad"] and not skip_bad:
                raise BadImageError(paths[meta["bad"][0]], f"recorded as corrupt in the {what}; rerun with skip_bad=True")
            return np.load(path, mmap_mode="r"), meta
        changed = ", ".join(f"{k}: {meta.get(k)!r} -> {v!r}" for k, v in key.items() if meta.get(k) != v)
        log.info("%s %s is stale (%s); rebuilding", what, path, changed)
    arr, meta = build()
    if meta["bad"]:
        log.warning("skipped %d corrupt image(s): %s", len(meta["bad"]), [str(paths[i]) for i in meta["bad"][:5]])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    meta = {**key, **meta}
    write_json(meta_path, meta)
    return np.load(path, mmap_mode="r"), meta


def cached_images(ws: Workspace, data: CompetitionData, split: str, size: int,
                  skip_bad: bool = False, progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """Return the [N, size, size, 3] uint8 images of a split and the indices of bad images.

    The array is memory-mapped from `ws/cache/images/<split>_<size>.npy` and rebuilt when the
    images change.
    """
    part = getattr(data, split)

    def build() -> tuple[np.ndarray, dict]:
        arr, bad = decode_many(part.paths, size, skip_bad=skip_bad, progress=progress, desc=f"decode {split}@{size}")
        return arr, {"bad": bad}

    key = {"dataset_fingerprint": data.fingerprint(labels=False, content=True),  # pixels: not labels, but a
           "ids_n": len(part), "size": size}                                    # replaced file
    arr, meta = cached_array(ws.image_cache(split, size), key, part.paths, build, skip_bad, "image cache")
    return arr, list(meta["bad"])

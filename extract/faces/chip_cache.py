"""Aligned face chips cached on disk: dlib's 5-point landmarks and chips computed once per (chip size, padding),
then reused by every face network, fold and re-run."""
from __future__ import annotations

import logging
import os

import numpy as np

from ..data.dataset import CompetitionData
from ..data.image_cache import cached_array
from ..data.workspace import Workspace
from ..errors import BadImageError
from ..workers import worker_pool
from .face_nets import align_files

log = logging.getLogger(__name__)


def cached_chips(ws: Workspace, data: CompetitionData, split: str, size: int, padding: float,
                 shape_predictor: str, shape_predictor_sha256: str, skip_bad: bool = False, progress: bool = True,
                 workers: int | None = None, chunk: int = 64) -> tuple[np.ndarray, list[int], int]:
    """The [N, size, size, 3] uint8 chips of a split (memory-mapped), the indices of corrupt images (black chips)
    and the number of chips that fell back to a plain resize. Rebuilt when the images or the landmark model change."""
    from tqdm.auto import tqdm

    part = getattr(data, split)
    paths = [str(p) for p in part.paths]

    def build() -> tuple[np.ndarray, dict]:
        jobs = [(paths[i:i + chunk], shape_predictor, size, padding) for i in range(0, len(paths), chunk)]
        chips = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
        bad: list[int] = []
        fallbacks = 0
        n = workers or len(os.sched_getaffinity(0))
        bar = tqdm(total=len(paths), desc=f"chips {split}@{size}", unit="img", disable=not progress)
        pool = worker_pool(n) if n > 1 and len(jobs) > 1 else None
        try:
            for j, (c, fell, errors) in enumerate(pool.map(align_files, jobs) if pool else map(align_files, jobs)):
                start = j * chunk
                chips[start:start + len(c)] = c
                fallbacks += len(fell)
                for i, reason in errors:
                    if not skip_bad:
                        raise BadImageError(paths[start + i], f"{reason}; rerun with skip_bad=True to exclude it")
                    chips[start + i] = 0
                    bad.append(start + i)
                bar.update(len(c))
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        log.info("%d %s chips, %d fell back to a plain resize, %d corrupt", len(paths), split, fallbacks, len(bad))
        return chips, {"bad": bad, "fallbacks": fallbacks}

    key = {"dataset_fingerprint": data.fingerprint(labels=False, content=True), "ids_n": len(part), "size": size,
           "padding": padding, "shape_predictor_sha256": shape_predictor_sha256}
    chips, meta = cached_array(ws.chip_cache(split, size, padding), key, paths, build, skip_bad, "chip cache")
    return chips, list(meta["bad"]), meta["fallbacks"]

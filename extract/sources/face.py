"""Pretrained face networks as frozen feature sources: one network, loaded once, run in-process or in a pool."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..models.face_nets import FaceNet, FaceNetConfig, feature_dim, init_worker, run_in_worker
from .base import FeatureSource


class FaceNetSource(FeatureSource):
    """A frozen face network over full-resolution images (it aligns its own chips).

    Batches of up to `2 * chunk` images run in-process; larger ones are split into chunks over a pool of
    `workers` processes, started on first use and kept until close().
    """

    n_spaces = 1
    input_size = None

    def __init__(self, recipe: dict, cfg: FaceNetConfig, workers: int | None = None, chunk: int = 32):
        self.recipe, self.cfg, self.chunk = recipe, cfg, chunk
        self.workers = workers or len(os.sched_getaffinity(0))
        self.has_logits = cfg.net != "dlib-face"
        self.fallbacks = 0
        self.rows_done = 0
        self._net: FaceNet | None = None
        self._pool: ProcessPoolExecutor | None = None

    def feature_dim(self) -> int:
        return feature_dim(self.cfg)

    def notes(self) -> dict:
        return {"alignment_fallbacks": self.fallbacks, "rows_computed": self.rows_done}

    def _results(self, images: list[np.ndarray]):
        if self.workers <= 1 or len(images) <= 2 * self.chunk:
            if self._net is None:
                self._net = FaceNet(self.cfg)
            return [self._net.run(images)]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, initializer=init_worker, initargs=(self.cfg,))
        return self._pool.map(run_in_worker, [images[i:i + self.chunk] for i in range(0, len(images), self.chunk)])

    def compute(self, batch, space=0):
        feats, logits = [], []
        for f, lg, fb in self._results(list(batch)):
            feats.append(f)
            logits.append(lg)
            self.fallbacks += fb
        self.rows_done += len(batch)
        return np.concatenate(feats), (np.concatenate(logits) if self.has_logits else None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._net = None

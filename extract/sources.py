"""Torch feature sources: K fine-tuned fold checkpoints, or one frozen backbone.

A fine-tuned source has K feature spaces (one per fold model); a frozen source has one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .backbones import Backbone, create
from .checkpoints import fold_checkpoints
from .inference import feature_dim, infer, resolve_device
from .source_base import HUB_WEIGHTS, RANDOM_INIT, FeatureSource, source_name


class TorchSource(FeatureSource):
    """A torch Backbone's last-conv features: K fine-tuned fold checkpoints, or one frozen model."""

    def __init__(self, name: str, models: list[Callable[[], Backbone]], sha256: list[str], pool: str,
                 images: Callable[[str, int], np.ndarray], probe: Backbone, kind: str, folds_fingerprint: str | None,
                 batch_size: int = 256, device: str = "auto", has_logits: bool = True):
        self.name, self.kind, self.pool = name, kind, pool
        self._models, self._sha256, self._images = models, sha256, images
        self._probe, self._folds_fp = probe, folds_fingerprint
        self.n_spaces, self.has_logits = len(models), has_logits
        self.batch_size, self.device = batch_size, resolve_device(device)
        self._loaded: dict[int, Backbone] = {}

    def attrs(self) -> dict:
        p = self._probe.preprocess
        a = {"source": self.name, "kind": self.kind, "backbone": self._probe.name, "layer": "forward_features",
             "pooling": self.pool, "img_size": p.img_size, "mean": list(p.mean), "std": list(p.std),
             "checkpoint_sha256": self._sha256, "extra": {"spec": self.spec}}
        if self.kind == "finetuned":
            a["folds_fingerprint"] = self._folds_fp
        return a

    def feature_dim(self) -> int:
        return feature_dim(self._probe, self.pool)

    def use_images(self, images, items) -> None:
        self._images = images

    def model(self, space: int) -> Backbone:
        """The model of one feature space, loaded once."""
        if space not in self._loaded:
            self._loaded[space] = self._models[space]()
        return self._loaded[space]

    def compute(self, space, split, rows, progress):
        images = self._images(split, self._probe.preprocess.img_size)
        logits, feats = infer(self.model(space), images, rows, self.batch_size, self.device, pool=self.pool,
                              progress=progress, desc=f"{self.name} {split} space {space}")
        return feats, (logits if self.has_logits else None)


def finetuned_source(model_dir: Path, backbone: str, k: int, folds_fingerprint: str, pool: str,
                     images: Callable[[str, int], np.ndarray], batch_size: int = 256,
                     device: str = "auto") -> TorchSource:
    """The K fold checkpoints written by train-backbone, checked against the workspace's folds."""
    import torch

    done = fold_checkpoints(model_dir, backbone, k, folds_fingerprint)
    cfg = done[0]["identity"]["config"]

    def loader(f: int) -> Callable[[], Backbone]:
        def load() -> Backbone:
            m = create(backbone, cfg["img_size"], weights="random", dropout=cfg["dropout"])
            ckpt = torch.load(model_dir / f"fold{f}.pt", map_location="cpu", weights_only=False)
            m.load_state_dict(ckpt["state_dict"])
            return m.eval()
        return load

    probe = create(backbone, cfg["img_size"], weights="random", dropout=cfg["dropout"])
    return TorchSource(backbone, [loader(f) for f in range(k)], [m["sha256"] for m in done], pool, images, probe,
                       "finetuned", folds_fingerprint, batch_size, device)


def frozen_source(backbone: str, img_size: int, pool: str, images: Callable[[str, int], np.ndarray],
                  weights: str | None = None, pretrained: bool = False, batch_size: int = 256,
                  device: str = "auto") -> TorchSource:
    """A backbone with given (pretrained) weights, never trained here: one feature space."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)  # a randomly initialised frozen model must be the same model every time
        model = create(backbone, img_size, pretrained=pretrained, weights=weights).eval()
    sha = model.weights_sha256 or (HUB_WEIGHTS if pretrained else RANDOM_INIT)
    return TorchSource(source_name(backbone, frozen=True), [lambda: model], [sha], pool, images, model, "frozen",
                       None, batch_size, device, has_logits=False)

"""The FeatureSource interface and the names shared by every source; importing it does not import torch."""
from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

POOLS = ("flatten", "avg", "max", "avgmax")
HUB_WEIGHTS, RANDOM_INIT = "hub", "random-init-seed0"  # checkpoint_sha256 of frozen models without a weights file


def library_versions() -> dict:
    """Versions of the libraries that shaped a cache, read from package metadata (importing timm costs seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "timm", "h5py", "numpy", "onnxruntime", "dlib-bin"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def source_name(backbone: str, frozen: bool) -> str:
    """Cache name of a backbone's features: the backbone itself, or '<backbone>-frozen'."""
    return f"{backbone}-frozen" if frozen else backbone


class FeatureSource(ABC):
    """One named source of features; `compute` runs one feature space over rows of one split."""

    name: str
    kind: str  # "finetuned" or "frozen"
    n_spaces: int
    has_logits: bool
    spec: dict = {}  # how to rebuild it (set by extract.featurize.build_source)

    @abstractmethod
    def attrs(self) -> dict:
        """Provenance recorded in the cache: backbone, layer, pooling, img_size, mean, std, checkpoint_sha256 …"""

    @abstractmethod
    def feature_dim(self) -> int: ...

    @abstractmethod
    def compute(self, space: int, split: str, rows: np.ndarray, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Features [len(rows), D] and logits [len(rows)] (or None) of the given split rows in one space."""

    @abstractmethod
    def use_images(self, images: Callable[[str, int], np.ndarray], items: dict[str, list]) -> None:
        """Point the source at other images: images(split, size) for torch sources, items[split] for face nets."""

    def notes(self) -> dict:
        """Counts gathered while computing (e.g. alignment fallbacks), stored in the cache's `notes`."""
        return {}

    def recipe(self) -> dict:
        """Everything that determines the features; a cache with another recipe is stale."""
        a = self.attrs()
        return {k: a[k] for k in ("source", "kind", "backbone", "layer", "pooling", "img_size", "mean", "std",
                                  "checkpoint_sha256", "folds_fingerprint", "extra") if k in a}

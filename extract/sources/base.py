"""The FeatureSource interface and the source kinds; importing it does not import torch."""
from __future__ import annotations

import platform
from abc import ABC, abstractmethod

import numpy as np

FINETUNED, FROZEN = "finetuned", "frozen"  # K fold models (one feature space each), or one model never trained here
KINDS = (FINETUNED, FROZEN)


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


class FeatureSource(ABC):
    """A named source of features, built once from its recipe: a pure function of a batch of images.

    recipe: everything that determines the features (extract.sources.spec.source_recipe), recorded in the cache.
    input_size: the square size its images must have (uint8 [B, S, S, 3]), or None for full-resolution images
    (a list of HWC uint8 RGB arrays) that it aligns itself.
    """

    recipe: dict
    n_spaces: int
    has_logits: bool
    input_size: int | None

    @property
    def name(self) -> str:
        return self.recipe["source"]

    @property
    def kind(self) -> str:
        return self.recipe["kind"]

    @abstractmethod
    def feature_dim(self) -> int: ...

    @abstractmethod
    def compute(self, batch, space: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """Features [B, D] and logits [B] (or None) of a batch of images in feature space `space`."""

    def notes(self) -> dict:
        """Counts gathered while computing (e.g. alignment fallbacks), stored in the cache's `notes`."""
        return {}

    def close(self) -> None:
        """Release worker processes or models; the source may not be used afterwards."""

"""The FeatureSource interface and the source kinds; importing it does not import torch."""
from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

FINETUNED, FROZEN = "finetuned", "frozen"  # K fold models (one feature space each), or one model never trained here
KINDS = (FINETUNED, FROZEN)
TTAS = ("none", "flip")  # test-time augmentation: none, or the mean over the image and its mirror


@dataclass(frozen=True)
class Input:
    """What a source computes on: uint8 [B, size, size, 3] images, plainly resized (padding None) or aligned face
    chips with this padding."""

    size: int
    padding: float | None = None

    @classmethod
    def of(cls, recipe: dict) -> "Input":
        """The input a recipe's source computes on: aligned chips for an aligned face network, else resized."""
        aligned = recipe["spec"]["type"] == "face" and recipe["spec"]["align"]
        return cls(recipe["img_size"], recipe["extra"]["chip_padding"] if aligned else None)


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
    input: the images it computes on (uint8 [B, S, S, 3], resized or aligned chips).
    """

    recipe: dict
    n_spaces: int
    has_logits: bool
    input: Input

    @property
    def name(self) -> str:
        return self.recipe["source"]

    @property
    def kind(self) -> str:
        return self.recipe["kind"]

    @abstractmethod
    def feature_dim(self) -> int: ...

    @abstractmethod
    def forward(self, batch: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Features [B, D] and logits [B] (or None) of one view of a batch, in feature space `space`."""

    def compute(self, batch: np.ndarray, space: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """Features [B, D] and logits [B] (or None) of uint8 images [B, S, S, 3] in feature space `space`; with
        flip TTA, the mean over the images and their mirrors."""
        feats, logits = self.forward(batch, space)
        if self.recipe["spec"].get("tta", "none") == "flip":
            f2, l2 = self.forward(np.ascontiguousarray(batch[:, :, ::-1]), space)
            feats = (feats + f2) / 2
            logits = None if logits is None else (logits + l2) / 2
        return feats, logits

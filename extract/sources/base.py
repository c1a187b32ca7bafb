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
        """The input a recipe's source computes on: aligned chips for an aligned face network or a fine-tuned one
        that takes chips (its recipe records their padding), else resized images."""
        spec, extra = recipe["spec"], recipe["extra"]
        aligned = spec["align"] if spec["type"] == "face" else "chip_padding" in extra
        return cls(recipe["img_size"], extra["chip_padding"] if aligned else None)


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

    def shared(self, batch: np.ndarray):
        """What every feature space computes first from a batch: by default the batch itself; a source whose fold
        models share a frozen trunk returns the trunk's activations, computed once for all spaces."""
        return batch

    @abstractmethod
    def forward(self, shared, space: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Features [B, D] and logits [B] (or None) in feature space `space`, from shared(one view of a batch)."""

    def shared_key(self) -> str | None:
        """Identifies what shared() computes from an input, or None: sources with equal keys and the same input
        (two face-resnet-based sources, say) may share one computation of it."""
        return None

    def compute_spaces(self, batch: np.ndarray, spaces, memo: dict | None = None
                       ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Features [B, D] and logits [B] (or None) of uint8 images [B, S, S, 3] in each of `spaces`; with flip
        TTA, the mean over the images and their mirrors. memo: shared() results of this batch by (shared_key,
        input, view), filled and reused across the sources of one call."""
        views = [batch]
        if self.recipe["spec"].get("tta", "none") == "flip":
            views.append(np.ascontiguousarray(batch[:, :, ::-1]))
        key = None if memo is None else self.shared_key()
        if key is None:
            shared = [self.shared(v) for v in views]
        else:
            for i, v in enumerate(views):
                if (key, self.input, i) not in memo:
                    memo[key, self.input, i] = self.shared(v)
            shared = [memo[key, self.input, i] for i in range(len(views))]
        out = []
        for space in spaces:
            feats, logits = zip(*(self.forward(x, space) for x in shared))
            out.append((sum(feats) / len(feats), None if logits[0] is None else sum(logits) / len(logits)))
        return out

    def compute(self, batch: np.ndarray, space: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """compute_spaces for one space."""
        return self.compute_spaces(batch, [space])[0]

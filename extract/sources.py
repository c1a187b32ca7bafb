"""Feature sources: what turns the images of one split into feature vectors (and logits) per feature space.

A fine-tuned source has K feature spaces (one per fold model); a frozen source has one.
"""
from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import read_json
from .backbones import Backbone, create
from .errors import WorkspaceError
from .inference import feature_dim, infer, resolve_device
from .atomic import sha256_file


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

    done = []
    for f in range(k):
        meta_path = model_dir / f"fold{f}.json"
        if not meta_path.exists() or not (model_dir / f"fold{f}.pt").exists():
            raise WorkspaceError(
                f"{backbone} has no finished checkpoint for fold {f} in {model_dir}; run "
                f"`train-backbone --backbone {backbone} --folds {k}` first (or `--frozen` for pretrained features)")
        meta = read_json(meta_path)
        actual = sha256_file(model_dir / f"fold{f}.pt")
        if actual != meta["sha256"]:
            raise WorkspaceError(f"{model_dir}/fold{f}.pt changed after training (sha256 {actual}, "
                                 f"recorded {meta['sha256']}); retrain with train-backbone")
        theirs = meta["identity"]["folds_fingerprint"]
        if theirs != folds_fingerprint:
            raise WorkspaceError(
                f"{model_dir}/fold{f}.pt was trained on another fold assignment (folds fingerprint {theirs}); "
                f"the workspace's folds have fingerprint {folds_fingerprint}. Retrain with train-backbone.")
        done.append(meta)
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
    sha = model.weights_sha256 or ("hub" if pretrained else "random-init-seed0")
    return TorchSource(source_name(backbone, frozen=True), [lambda: model], [sha], pool, images, model, "frozen", None, batch_size, device,
                       has_logits=False)

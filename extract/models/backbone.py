"""Backbones as torch modules (timm-style `create(name)`): a feature body exposing its last conv map, plus a
binary head. The registry entry (extract.models.registry) says how each name is built."""
from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from ..errors import UnknownBackboneError, WeightsError
from .registry import Entry, Preprocess, lookup, weights_file


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
        self.new_keys: tuple[str, ...] = ()  # parameters a pretrained file does not hold (a new output layer)

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


def _cnn_body(variant: str, pretrained: bool) -> nn.Module:
    chans = {"small": [3, 32, 64, 128], "deep": [3, 32, 64, 128, 256, 256]}[variant]
    bn = variant == "deep"
    return nn.Sequential(*[m for a, b in zip(chans, chans[1:]) for m in _conv_block(a, b, bn)])


def _torchvision_body(arch: str, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    ctor = getattr(tvm, arch)
    model = _fetch(f"torchvision {arch}", lambda: ctor(weights="DEFAULT" if pretrained else None))
    if arch.startswith("vgg"):
        return model.features
    # drop avgpool and fc; the children keep torchvision's names, so its state dicts load as users save them
    return nn.Sequential(OrderedDict(list(model.named_children())[:-2]))


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
                "download them on a machine that is online and pass weights=PATH"
            ) from exc
        raise
    finally:
        socket.setdefaulttimeout(old)


class _TimmFeatures(nn.Module):
    """A timm model reduced to its forward_features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _timm_body(name: str, pretrained: bool) -> nn.Module:
    import timm

    if not timm.list_models(name) and name not in timm.list_models(pretrained=True):
        raise UnknownBackboneError(f"unknown timm model {name!r}; see timm.list_models()")
    return _fetch(f"timm {name}", lambda: _TimmFeatures(
        timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")))


def _face_body(name: str, pretrained: bool) -> nn.Module:
    """A pretrained face network's architecture; its weights come from the package's file (default_weights)."""
    if name == "gender-cnn":
        from ..faces.gender_cnn import gender_body

        return gender_body()
    if name == "faceres-deep":
        from ..faces.faceres_torch import FaceResBody

        return FaceResBody()
    from ..faces.dlib_resnet import DlibBody

    return DlibBody()


def _descriptor_head(dropout: float) -> nn.Module:
    """dlib's pooled fc 256 -> 128 (pretrained), then a new linear layer to one logit."""
    from ..faces.dlib_resnet import descriptor_head

    head = descriptor_head()
    head.add_module("dropout", nn.Dropout(dropout))
    head.add_module("out", nn.Linear(128, 1))
    return head


def _feats_head(dropout: float) -> nn.Module:
    """FaceRes's pooled `feats` layer 1024 -> 256 (pretrained), then a new linear layer to one logit."""
    from ..faces.faceres_torch import feats_head

    head = feats_head()
    head.add_module("dropout", nn.Dropout(dropout))
    head.add_module("out", nn.Linear(256, 1))
    return head


def check_cut(model: Backbone, cut: str) -> str:
    """A cut of the model's frozen trunk; an unknown one is an error listing the valid cuts and their maps."""
    shapes = getattr(model.body, "cut_shapes", {})
    if cut not in shapes:
        raise ValueError(f"unknown cut {cut!r} of {model.name}; choose one of "
                         + ", ".join(f"{c} ({'x'.join(map(str, s))})" for c, s in shapes.items()))
    return cut


def trunk_key(body: nn.Module, cut: str, mean: tuple, std: tuple) -> str:
    """Identifies what a body's trunk below `cut` computes from uint8 images normalised by (mean, std): its class,
    the cut, the normalisation and the trunk's weights. Equal keys, equal activations."""
    import hashlib

    h = hashlib.sha256(repr((type(body).__name__, cut, tuple(map(float, mean)), tuple(map(float, std)))).encode())
    for p in body.trunk_parameters(cut):
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_BODIES = {"cnn": _cnn_body, "torchvision": _torchvision_body, "timm": _timm_body, "face": _face_body}


def build_body(entry: Entry, pretrained: bool) -> nn.Module:
    family, name = entry.body
    return _BODIES[family](name, pretrained)


def create(name: str, img_size: int = 64, pretrained: bool = False, weights: str | None = None,
           dropout: float = 0.5) -> Backbone:
    """Create a registered backbone with its preprocessing.

    pretrained: hub weights (needs network); weights: a local state dict (whole model or body), or
    "random" to skip a backbone's built-in default weights.
    """
    entry = lookup(name)
    if entry.img_size is not None and img_size != entry.img_size:
        raise ValueError(f"{name} takes {entry.img_size} px inputs (its pretrained size), not {img_size}")
    if img_size < entry.reduction:
        raise ValueError(f"image size {img_size} is too small for {name}: it downsamples by "
                         f"{entry.reduction}, so the minimum is {entry.reduction}")
    body = build_body(entry, pretrained)
    body.eval()
    with torch.no_grad():
        fmap = body(torch.zeros(1, 3, img_size, img_size))
    if fmap.ndim != 4 or fmap.shape[-1] < 1 or fmap.shape[-2] < 1:
        raise ValueError(f"image size {img_size} gives an empty feature map for {name}")
    c, h, w = fmap.shape[1:]
    heads = {"fc": lambda: _fc_head(c * h * w, entry.hidden, dropout), "pool": lambda: _pool_head(c, dropout),
             "descriptor": lambda: _descriptor_head(dropout), "feats": lambda: _feats_head(dropout)}
    model = Backbone(name, body, heads[entry.head](), int(c), (int(h), int(w)), entry.preprocess(img_size))
    if entry.head in ("descriptor", "feats"):
        model.new_keys = ("head.out.weight", "head.out.bias")
    path = weights_file(name, weights, pretrained)
    if path is not None:
        from .weights import load_weights

        model.weights_sha256 = load_weights(model, path)
    return model

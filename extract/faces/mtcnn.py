"""MTCNN (Zhang et al., 2016): three small CNNs in a cascade. P-Net slides over an image pyramid and proposes
boxes, R-Net (24 px) and O-Net (48 px) re-score and refine them; O-Net also gives five points (eyes, nose, mouth
corners). The networks are written here; their weights are data, read from the package (detector_weights).

The NMS overlaps are the paper's (and facenet-pytorch's); the first two stages' thresholds and the pyramid's
step were chosen on tuning scenes; the photo scale at which P-Net starts is set by `min_face` (P-Net sees 12-px
windows).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from .boxes import nms, square
from .pyramid import as_pil, as_tensor, resized

CELL, STRIDE = 12, 2  # P-Net's window and its step, in pixels of the pyramid level
TILE = 256  # P-Net runs on tiles of this side (even: its pooling then never pads a tile)
FACTOR = 0.6  # each pyramid level is this times the one before (the paper: 0.709; as many faces found in 40
# tuning scenes, in 18 % less time). 0.5 found as many in those 40 in a fifth less time, but in 100 scenes of seed 1
# (bench/tune_detectors.py --steps 100) fewer (86.5 % against 87.4 %), framed worse (accuracy 95.2 % against 95.9 %)
# P-Net, R-Net, O-Net: the least face probability kept (bench/tune_detectors.py). The paper's are 0.6, 0.7, 0.7;
# laxer first stages let O-Net see more candidates (1.4 points more recall in 40 tuning scenes, up to 15 % more time),
# and O-Net at 0.8 refuses the one false face they then let through in 38 natural pictures (a badge on the
# mirrored astronaut's suit, 0.765), for 0.5 points of that recall
THRESHOLDS = (0.4, 0.4, 0.8)
NMS_LEVEL, NMS_PNET, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7  # IoU (O-Net: overlap of the smaller box)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """0-255 values to MTCNN's input range (in place)."""
    return x.sub_(127.5).mul_(0.0078125)


class PNet(nn.Module):
    """Proposal network: fully convolutional, a face probability and a box offset per 12-px window."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, h, w) in NCHW memory (PReLU is 4x slower on channels-last tensors of 10 channels)."""
        x = pool2(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        y = F.conv2d(x, torch.cat([self.conv4_1.weight, self.conv4_2.weight]),
                     torch.cat([self.conv4_1.bias, self.conv4_2.bias]))  # both heads in one pass
        return torch.sigmoid(y[:, 1] - y[:, 0]), y[:, 2:]  # the sigmoid: softmax over two classes


def pool2(x: torch.Tensor) -> torch.Tensor:
    """Max over 2x2 cells, stride 2, a last odd row or column pooled alone (max_pool2d's ceil_mode): as two
    strided maxima, 4-10x faster than max_pool2d on this CPU."""
    if x.shape[-2] % 2:
        x = torch.cat([x, x[..., -1:, :]], -2)
    if x.shape[-1] % 2:
        x = torch.cat([x, x[..., -1:]], -1)
    x = torch.maximum(x[..., ::2, :], x[..., 1::2, :])
    return torch.maximum(x[..., ::2], x[..., 1::2])


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))  # the original (Caffe) weights' order
        return F.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 crops: probability, box offset and five points."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return F.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


class MTCNN(nn.Module):
    """The three networks; `detect` runs the cascade on one photo."""

    def __init__(self):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()

    def _levels(self, photo: np.ndarray, min_face: int):
        """The pyramid: (level as HWC uint8, its scale), from the scale at which faces of min_face pixels fill
        P-Net's window, each level resized from the one before, down to the window itself."""
        h, w = photo.shape[:2]
        level = resized(photo, CELL / min_face)
        while min(level.shape[:2]) >= CELL:
            yield level, level.shape[1] / w
            level = resized(level, FACTOR)

    def _pnet_map(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net's probability (h, w) and offsets (4, h, w) over a whole level, run tile by tile (TILE px, each
        tile's windows continuing where the last one's ended): 3-4x faster than at once on a CPU, whose caches
        then hold a tile's activations."""
        _, _, h, w = level.shape
        cells_h, cells_w = (h - CELL) // STRIDE + 1, (w - CELL) // STRIDE + 1
        step = TILE - (CELL - STRIDE)  # the next tile's first window follows this tile's last
        prob, reg = level.new_zeros((cells_h, cells_w)), level.new_zeros((4, cells_h, cells_w))
        for y in range(0, h - CELL + 1, step):
            for x in range(0, w - CELL + 1, step):
                p, r = self.pnet(level[:, :, y:y + TILE, x:x + TILE])
                cy, cx = y // STRIDE, x // STRIDE
                ph, pw = p.shape[-2:]
                prob[cy:cy + ph, cx:cx + pw] = p[0, :cells_h - cy, :cells_w - cx]
                reg[:, cy:cy + ph, cx:cx + pw] = r[0, :, :cells_h - cy, :cells_w - cx]
        return prob, reg

    def _propose(self, photo: np.ndarray, min_face: int, device: torch.device) -> torch.Tensor:
        """P-Net over the pyramid: rows of (x1, y1, x2, y2, score) in the photo's pixels, boxes regressed."""
        found = []
        for level, s in self._levels(photo, min_face):
            prob, reg = self._pnet_map(normalise(as_tensor(level, device, channels_last=False)))
            ys, xs = torch.nonzero(prob >= THRESHOLDS[0], as_tuple=True)
            if not len(ys):
                continue
            x1, y1 = ((STRIDE * xs + 1) / s).floor(), ((STRIDE * ys + 1) / s).floor()
            x2, y2 = ((STRIDE * xs + CELL) / s).floor(), ((STRIDE * ys + CELL) / s).floor()
            boxes = torch.stack([x1, y1, x2, y2, prob[ys, xs]], 1)
            boxes = torch.cat([boxes, reg[:, ys, xs].T], 1)
            found.append(boxes[nms(boxes[:, :4], boxes[:, 4], NMS_LEVEL)])
        if not found:
            return torch.zeros((0, 5), device=device)
        boxes = torch.cat(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], NMS_PNET)]
        return torch.cat([_regress(boxes[:, :4], boxes[:, 5:9]), boxes[:, 4:5]], 1)

    @torch.no_grad()
    def detect(self, photo: np.ndarray, min_face: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One HWC uint8 RGB photo -> (boxes: (n, 5) x1 y1 x2 y2 score, points: (n, 5, 2): the eyes (as seen,
        left first), nose, mouth corners), in the photo's pixels, counted from 1 (MTCNN's convention)."""
        device = next(self.parameters()).device
        boxes = self._propose(photo, min_face, device)
        image = as_pil(photo)
        if len(boxes):
            boxes = square(boxes)
            prob, reg = self.rnet(_crops(image, boxes, 24, device))
            keep = prob >= THRESHOLDS[1]
            boxes, prob, reg = boxes[keep], prob[keep], reg[keep]
            keep = nms(boxes[:, :4], prob, NMS_RNET)
            boxes = square(torch.cat([_regress(boxes[keep, :4], reg[keep]), prob[keep, None]], 1))
        if not len(boxes):
            return torch.zeros((0, 5), device=device), torch.zeros((0, 5, 2), device=device)
        prob, reg, marks = self.onet(_crops(image, boxes, 48, device))
        keep = prob >= THRESHOLDS[2]
        boxes, prob, reg, marks = boxes[keep], prob[keep], reg[keep], marks[keep]
        wh = (boxes[:, 2:4] - boxes[:, :2] + 1)[:, None, :]
        points = torch.stack([marks[:, :5], marks[:, 5:]], 2) * wh + boxes[:, None, :2] - 1
        boxes = torch.cat([_regress(boxes[:, :4], reg), prob[:, None]], 1)
        keep = nms(boxes[:, :4], prob, NMS_ONET, smaller=True)
        return boxes[keep], points[keep]


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Boxes moved by the networks' offsets, in box widths and heights."""
    wh = (boxes[:, 2:4] - boxes[:, :2] + 1).repeat(1, 2)
    return boxes + reg * wh


def _crops(image: Image.Image, boxes: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """Each box of the photo (x1..x2 inclusive, counted from 1, as MTCNN counts) resized to size x size and
    normalised for the networks; beyond the photo's edge, black (as in the paper's code)."""
    crops = [np.asarray(image.crop((x1 - 1, y1 - 1, x2, y2)).resize((size, size), Image.BILINEAR))
             for x1, y1, x2, y2 in boxes[:, :4].round().int().tolist()]
    return normalise(torch.from_numpy(np.stack(crops)).to(device).permute(0, 3, 1, 2).float())

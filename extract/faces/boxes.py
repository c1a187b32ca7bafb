"""Box arithmetic shared by the CNN face detectors: non-maximum suppression and squaring, on (n, >=4) tensors of
x1, y1, x2, y2 (then score, ...)."""
from __future__ import annotations

import numpy as np
import torch


def nms(boxes: torch.Tensor, scores: torch.Tensor, overlap: float, smaller: bool = False) -> torch.Tensor:
    """Indices of the boxes kept, best score first: a box is dropped when it overlaps a better one by more than
    `overlap`, as intersection over union, or (smaller=True) over the smaller box's area. (torchvision's nms gives
    the same for IoU, but importing torchvision.ops takes 3 s: once in each worker process.)"""
    b = boxes[:, :4].detach().cpu().double().numpy()
    order = np.argsort(-scores.detach().cpu().double().numpy(), kind="stable")
    area = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)
    keep = []
    while len(order):  # in numpy: its small operations cost a tenth of torch's
        i, order = order[0], order[1:]
        keep.append(i)
        iw = (np.minimum(b[i, 2], b[order, 2]) - np.maximum(b[i, 0], b[order, 0])).clip(min=0)
        ih = (np.minimum(b[i, 3], b[order, 3]) - np.maximum(b[i, 1], b[order, 1])).clip(min=0)
        inter = iw * ih
        base = np.minimum(area[i], area[order]) if smaller else area[i] + area[order] - inter
        order = order[inter <= overlap * base]
    return torch.as_tensor(np.array(keep, dtype=np.int64), device=boxes.device)


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box made square about its centre, its side the longer of its two (other columns kept)."""
    out = boxes.clone()
    wh = boxes[:, 2:4] - boxes[:, :2]
    side = wh.max(1).values
    out[:, :2] = boxes[:, :2] + wh / 2 - side[:, None] / 2
    out[:, 2:4] = out[:, :2] + side[:, None]
    return out

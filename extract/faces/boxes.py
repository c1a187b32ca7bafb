"""Box arithmetic shared by the CNN face detectors: non-maximum suppression and squaring, on (n, >=4) tensors of
x1, y1, x2, y2 (then score, ...)."""
from __future__ import annotations

import torch


def nms(boxes: torch.Tensor, scores: torch.Tensor, overlap: float, smaller: bool = False) -> torch.Tensor:
    """Indices of the boxes kept, best score first: a box is dropped when it overlaps a better one by more than
    `overlap`, as intersection over union, or (smaller=True) over the smaller box's area."""
    if not smaller:
        from torchvision.ops import nms as iou_nms

        return iou_nms(boxes.float(), scores.float(), overlap)
    order = scores.argsort(descending=True)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep = []
    while len(order):
        i, order = order[0], order[1:]
        keep.append(i)
        lt = torch.maximum(boxes[i, :2], boxes[order, :2])
        rb = torch.minimum(boxes[i, 2:4], boxes[order, 2:4])
        inter = (rb - lt).clamp(min=0).prod(1)
        order = order[inter / torch.minimum(area[i], area[order]).clamp(min=1e-9) <= overlap]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box made square about its centre, its side the longer of its two (other columns kept)."""
    out = boxes.clone()
    wh = boxes[:, 2:4] - boxes[:, :2]
    side = wh.max(1).values
    out[:, :2] = boxes[:, :2] + wh / 2 - side[:, None] / 2
    out[:, 2:4] = out[:, :2] + side[:, None]
    return out

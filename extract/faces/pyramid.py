"""Image pyramids for the CNN face detectors, resized in uint8 by PIL (antialiased; several times faster than
resizing a float tensor), each level handed to torch as a float (1, 3, h, w) tensor of 0-255 RGB."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def resized(image: np.ndarray, scale: float) -> np.ndarray:
    """An HWC uint8 photo scaled by `scale` (sides rounded up; 1.0: the photo itself). A reduction by 2 or more is
    first a box-filter reduction by the whole factor (ten times faster than resampling a large photo)."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(np.ceil(w * scale))), max(1, int(np.ceil(h * scale))))
    pil = as_pil(image)
    factor = int(1 / scale + 1e-6)
    if factor >= 2:
        pil = pil.reduce(factor)
    if pil.size != size:
        pil = pil.resize(size, Image.BILINEAR)
    return np.asarray(pil)


def as_pil(image: np.ndarray) -> Image.Image:
    """An HWC uint8 RGB array as a PIL image sharing its memory (no copy)."""
    image = np.ascontiguousarray(image)
    return Image.frombuffer("RGB", (image.shape[1], image.shape[0]), image, "raw", "RGB", 0, 1)


def as_tensor(image: np.ndarray, device: torch.device | str, channels_last: bool = True) -> torch.Tensor:
    """An HWC uint8 RGB photo as a float (1, 3, H, W) tensor of 0-255 values, in channels-last memory (faster
    convolutions on CPUs for networks of many channels) or NCHW."""
    t = torch.from_numpy(np.array(image, copy=not image.flags.writeable)).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return t.permute(2, 0, 1)[None].to(torch.float32, memory_format=fmt)

"""Batched training augmentations on uint8 image tensors, and normalisation."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """The write-up's augmentations; each can be switched off or scaled."""

    brightness: float = 0.2  # factor drawn from [1-b, 1+b]
    contrast: float = 0.2
    grayscale_p: float = 0.1
    rotation_deg: float = 10.0
    hflip_p: float = 0.5
    vflip_p: float = 0.0  # off by default: upside-down faces do not occur

    def as_dict(self) -> dict:
        return asdict(self)


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float in [0, 1]."""
    return batch_u8.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.sub(x, m).div_(s)  # one new tensor, not two


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Randomly augment a [B, 3, H, W] float batch in [0, 1]; gen makes it reproducible."""
    b, dev = x.shape[0], x.device

    def rand(*shape):
        return torch.rand(*shape, generator=gen).to(dev)

    if cfg.brightness > 0:
        x = x * (1 + (rand(b, 1, 1, 1) * 2 - 1) * cfg.brightness)
    if cfg.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + (rand(b, 1, 1, 1) * 2 - 1) * cfg.contrast) + mean
    if cfg.grayscale_p > 0:
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = torch.where(rand(b, 1, 1, 1) < cfg.grayscale_p, gray, x)
    x = x.clamp_(0, 1)
    if cfg.hflip_p > 0:
        x = torch.where(rand(b, 1, 1, 1) < cfg.hflip_p, x.flip(3), x)
    if cfg.vflip_p > 0:
        x = torch.where(rand(b, 1, 1, 1) < cfg.vflip_p, x.flip(2), x)
    if cfg.rotation_deg > 0:
        ang = (rand(b) * 2 - 1) * math.radians(cfg.rotation_deg)
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x

"""An exponential moving average of a model's weights during training (the averaged model is the one validated
and saved): it smooths the noisy steps of a short fine-tuning run on a few thousand faces."""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """ema_t = decay * ema_(t-1) + (1 - decay) * w_t after every optimizer step, started from the model's weights
    (its pretrained ones); buffers (batch-norm statistics) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight-average decay {decay}: between 0 and 1 (exclusive)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - self.decay)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)

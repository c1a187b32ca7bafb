"""Pretrained face networks as frozen feature sources: one network, loaded once, run on face chips."""
from __future__ import annotations

from ..models.face_nets import FaceNet, FaceNetConfig, feature_dim
from .base import FeatureSource, Input


class FaceNetSource(FeatureSource):
    """A frozen face network over aligned chips (or plainly resized images when not aligned)."""

    n_spaces = 1

    def __init__(self, recipe: dict, cfg: FaceNetConfig, device: str = "auto"):
        self.recipe, self.cfg, self.device = recipe, cfg, device
        self.input = Input.of(recipe)
        self.has_logits = cfg.net != "dlib-face"
        self._net: FaceNet | None = None

    def feature_dim(self) -> int:
        return feature_dim(self.cfg)

    def forward(self, batch, space):
        if self._net is None:
            self._net = FaceNet(self.cfg, self.device)
        return self._net.run(batch)

"""Pretrained face networks as frozen feature sources: one network, loaded once, run on face chips."""
from __future__ import annotations

from ..faces.face_nets import FaceNet, FaceNetConfig, feature_dim
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

    @property
    def net(self) -> FaceNet:
        if self._net is None:
            self._net = FaceNet(self.cfg, self.device)
        return self._net

    # dlib-face: the frozen trunk in shared(), the top in forward(), so that a fused model runs the trunk once for
    # it and face-resnet (same weights, chips and normalisation: same shared_key)
    def shared_key(self) -> str | None:
        return self.net.trunk_key if self.cfg.net == "dlib-face" else None

    def shared(self, batch):
        return self.net.trunk(batch) if self.cfg.net == "dlib-face" else batch

    def forward(self, shared, space):
        return (self.net.above(shared), None) if self.cfg.net == "dlib-face" else self.net.run(shared)

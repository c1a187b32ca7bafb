"""Torch feature sources: K fine-tuned fold checkpoints, or one frozen backbone."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..data.workspace import Workspace
from ..errors import WorkspaceError
from ..models.backbone import Backbone, create, trunk_key
from ..models.checkpoints import read_checkpoint
from ..models.inference import feature_dim, infer, infer_above, resolve_device
from ..models.registry import Preprocess
from ..models.trunk_cache import trunk_activations
from .base import FeatureSource, Input


class TorchSource(FeatureSource):
    """A torch Backbone's pooled last-conv features (and its logit) in each of its feature spaces."""

    def __init__(self, recipe: dict, models: list[Callable[[], Backbone]], probe: Backbone, has_logits: bool,
                 batch_size: int = 256, device: str = "auto"):
        """models[s]() loads the model of space s (once, on first use); probe is any one of them, for shapes."""
        self.recipe = recipe
        self._models, self._probe = models, probe
        self.n_spaces, self.has_logits = len(models), has_logits
        self.input = Input.of(recipe)
        self.batch_size, self.device = batch_size, resolve_device(device)
        self._loaded: dict[int, Backbone] = {}
        self._trunk_key: str | None = None

    def feature_dim(self) -> int:
        return feature_dim(self._probe, self.recipe["pooling"])

    def model(self, space: int) -> Backbone:
        """The model of one feature space, loaded once, in channels-last memory format (faster on CPU and GPU)."""
        if space not in self._loaded:
            model = self._models[space]().to(self.device, memory_format=torch.channels_last)
            cut = self.recipe["extra"].get("trunk_cut")
            if cut is not None and space != 0 and not _same_trunk(model, self.model(0), cut):
                raise WorkspaceError(f"{self.name}: the fold {space} model's trunk below {cut} differs from fold 0's; "
                                     "the fold models must share one frozen trunk (retrain them with train-backbone)")
            self._loaded[space] = model
        return self._loaded[space]

    def shared_key(self) -> str | None:
        cut = self.recipe["extra"].get("trunk_cut")
        if cut is not None and self._trunk_key is None:
            model = self.model(0)
            self._trunk_key = trunk_key(model.body, cut, model.preprocess.mean, model.preprocess.std)
        return self._trunk_key

    def shared(self, batch):
        """The frozen trunk's activations when the fold models share one (they are trained above its cut)."""
        cut = self.recipe["extra"].get("trunk_cut")
        if cut is None:
            return batch
        return trunk_activations(self.model(0), batch, cut, self.device, mirror=False, dtype=np.float32)[:, 0]

    def forward(self, shared, space):
        cut = self.recipe["extra"].get("trunk_cut")
        if cut is None:
            logits, feats = infer(self.model(space), shared, np.arange(len(shared)), self.batch_size, self.device,
                                  pool=self.recipe["pooling"])
        else:
            logits, feats = infer_above(self.model(space), shared, cut, self.batch_size, self.device,
                                        self.recipe["pooling"])
        return feats, (logits if self.has_logits else None)


def _same_trunk(a: Backbone, b: Backbone, cut: str) -> bool:
    """Whether two models' weights below a cut are equal."""
    return all(torch.equal(x, y) for x, y in zip(a.body.trunk_parameters(cut), b.body.trunk_parameters(cut)))


def finetuned_source(recipe: dict, ws: Workspace, batch_size: int = 256, device: str = "auto") -> TorchSource:
    """The K fold checkpoints written by train-backbone (their sha256 checked by the recipe); each is normalised with
    the preprocessing saved with it (the recipe's: folds that differ are refused there)."""
    def fold(f: int) -> tuple[dict, dict]:
        ckpt = read_checkpoint(ws.fold_files(recipe["backbone"], f).best)
        return ckpt["identity"]["config"], ckpt["state_dict"]

    return fold_source(recipe, fold, pretrained_base=False, batch_size=batch_size, device=device)


def fold_source(recipe: dict, fold: Callable[[int], tuple[dict, dict]], pretrained_base: bool,
                batch_size: int = 256, device: str = "auto") -> TorchSource:
    """A fine-tuned source from its K fold models: fold(f) -> (training config, state dict). pretrained_base: the
    state dicts hold only what training changed, laid over the backbone's default (pretrained) weights."""
    backbone, pre = recipe["backbone"], Preprocess.from_dict(recipe)

    def build(cfg: dict, weights: str | None = "random") -> Backbone:
        return create(backbone, cfg["img_size"], weights=weights, dropout=cfg["dropout"])

    def loader(f: int) -> Callable[[], Backbone]:
        def load() -> Backbone:
            cfg, state = fold(f)
            m = build(cfg, None if pretrained_base else "random")
            if pretrained_base:
                full = m.state_dict()
                unknown = sorted(set(state) - set(full))
                if unknown:
                    raise WorkspaceError(f"{recipe['source']} fold {f}: tensors {unknown[:3]} are not in {backbone}")
                state = {**full, **state}
            m.load_state_dict(state)
            m.preprocess = pre
            return m.eval()
        return load

    probe = build({"img_size": pre.img_size, "dropout": 0.0})
    return TorchSource(recipe, [loader(f) for f in range(len(recipe["checkpoint_sha256"]))], probe, True,
                       batch_size, device)


def frozen_source(recipe: dict, batch_size: int = 256, device: str = "auto") -> TorchSource:
    """A backbone with given (pretrained) weights, never trained here: one feature space."""
    spec = recipe["spec"]
    with torch.random.fork_rng():
        torch.manual_seed(0)  # a randomly initialised frozen model must be the same model every time
        model = create(spec["backbone"], spec["img_size"], pretrained=spec["pretrained"], weights=spec["weights"]).eval()
    if model.weights_sha256 not in (None, recipe["checkpoint_sha256"][0]):
        raise WorkspaceError(f"weights of {recipe['source']} changed while loading (sha256 {model.weights_sha256}, "
                             f"recipe {recipe['checkpoint_sha256'][0]})")
    return TorchSource(recipe, [lambda: model], model, False, batch_size, device)

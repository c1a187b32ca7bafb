"""Leakage-free stacking protocols: held-out probabilities for every training row.

- per-fold: head k lives in fold k's feature space. It sees only fold k's rows (whose fine-tuned features come
  from the fold-k model, which never trained on them); its accuracy comes from inner CV within the fold.
- global: frozen features plus the fine-tuned sources' out-of-fold logits, which mean the same in every fold;
  ordinary CV over the shared folds.
- pooled: global, plus the fine-tuned sources' features, each training row's from the fold model that held it out,
  read as one space across the fold models (they start from the same pretrained weights and the weight average keeps
  them near it); a prediction averages the head over the K fold models' features. Every row is still scored by a head
  and a fold model that never trained on it, so the CV measures honestly how well the spaces agree.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.model_selection import StratifiedKFold

from genderfusion.extract.sources.base import FINETUNED, FROZEN

from genderfusion.fusion.model.features import FusionData, Outputs, Source

LOG = logging.getLogger("genderfusion").info  # progress lines, unless the caller passes its own `log`

PROTOCOLS = ("per-fold", "global", "pooled")
DEFAULT_PROTOCOLS = ("per-fold", "global")  # pooled measured below global on the real faces (README)
HeadFactory = Callable[[list[int]], object]  # block widths -> unfitted estimator


def head_factory(head: str, params: dict | None = None) -> HeadFactory:
    """block widths -> an unfitted head of the given kind."""
    from genderfusion.heads import HEADS

    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    return lambda blocks: HEADS[head](blocks=blocks, **(params or {}))


def per_fold_matrix(sources: list[Source], rows: np.ndarray) -> np.ndarray:
    """Concatenated train features of `rows`, all of them in fold model `space`'s feature space."""
    return np.hstack([s.train[rows].astype(np.float32) for s in sources])


def per_fold_test_matrix(outputs: list[Outputs], space: int) -> np.ndarray:
    """Concatenated features of rows to predict, in fold model `space`'s feature space (frozen: their one space)."""
    return np.hstack([o.features[space if o.kind == FINETUNED else 0].astype(np.float32) for o in outputs])


def global_blocks(sources: list[Source]) -> list[int]:
    return [s.width if s.kind == FROZEN else 1 for s in sources]


def global_matrix(sources: list[Source]) -> np.ndarray:
    """Frozen features and the fine-tuned sources' out-of-fold logits."""
    return np.hstack([s.train.astype(np.float32) if s.kind == FROZEN else s.train_logit[:, None]
                      for s in sources])


def global_test_matrix(outputs: list[Outputs]) -> np.ndarray:
    """Frozen features of rows to predict and the fine-tuned sources' logits averaged over the fold models."""
    return np.hstack([o.features[0].astype(np.float32) if o.kind == FROZEN else o.logits.mean(0)[:, None]
                      for o in outputs])


def _pooled_parts(kind: str, features: np.ndarray, logit: np.ndarray | None) -> list[np.ndarray]:
    if kind == FROZEN:
        return [features.astype(np.float32)]
    return [features.astype(np.float32), logit.astype(np.float32)[:, None]]


def pooled_blocks(sources: list[Source]) -> list[int]:
    return [w for s in sources for w in ((s.width,) if s.kind == FROZEN else (s.width, 1))]


def pooled_matrix(sources: list[Source]) -> np.ndarray:
    """Frozen features; each fine-tuned source's out-of-fold features and logit."""
    return np.hstack([a for s in sources for a in _pooled_parts(s.kind, s.train, s.train_logit)])


def pooled_test_matrix(outputs: list[Outputs], space: int) -> np.ndarray:
    """Rows to predict as fold model `space` sees them (frozen sources: their one space)."""
    return np.hstack([a for o in outputs for a in _pooled_parts(
        o.kind, o.features[0 if o.kind == FROZEN else space], None if o.kind == FROZEN else o.logits[space])])


def cv_per_fold(data: FusionData, make_head: HeadFactory, inner_splits: int = 3, seed: int = 0) -> np.ndarray:
    """Held-out P(y=1) for every row: inner CV inside each fold, in that fold's feature space."""
    probs = np.empty(len(data.y))
    blocks = [s.width for s in data.sources]
    for k in range(data.k):
        rows = np.flatnonzero(data.fold == k)
        X, y = per_fold_matrix(data.sources, rows), data.y[rows]
        inner = StratifiedKFold(inner_splits, shuffle=True, random_state=seed + k)
        trainable = data.trainable[rows]
        for tr, va in inner.split(X, y):
            tr = tr[trainable[tr]]
            probs[rows[va]] = make_head(blocks).fit(X[tr], y[tr]).predict_proba(X[va])[:, 1]
    return probs


def cv_global(data: FusionData, make_head: HeadFactory, X: np.ndarray | None = None,
              blocks: list[int] | None = None) -> np.ndarray:
    """Held-out P(y=1) for every row by CV over the shared folds."""
    X = global_matrix(data.sources) if X is None else X
    blocks = global_blocks(data.sources) if blocks is None else blocks
    probs = np.empty(len(data.y))
    for k in range(data.k):
        tr, va = (data.fold != k) & data.trainable, data.fold == k
        probs[va] = make_head(blocks).fit(X[tr], data.y[tr]).predict_proba(X[va])[:, 1]
    return probs


def logit_sources(data: FusionData) -> list[Source]:
    return [s for s in data.sources if s.train_logit is not None]


def logit_matrix(data: FusionData) -> np.ndarray:
    return np.column_stack([s.train_logit for s in logit_sources(data)])


@dataclass
class Result:
    method: str
    protocol: str
    probs: np.ndarray = field(repr=False)
    seconds: float

    def accuracy(self, y: np.ndarray, mask: np.ndarray | None = None) -> float:
        m = np.ones(len(y), bool) if mask is None else mask
        return float(((self.probs[m] >= 0.5) == y[m]).mean()) if m.any() else float("nan")


def _timed(method: str, protocol: str, fn: Callable[[], np.ndarray]) -> Result:
    t = time.time()
    probs = fn()
    return Result(method, protocol, probs, time.time() - t)


def evaluate(data: FusionData, heads: dict[str, HeadFactory],
             protocols: tuple[str, ...] = DEFAULT_PROTOCOLS,
             probe: HeadFactory | None = None, log: Callable[[str], None] = LOG) -> list[Result]:
    """Every source alone, both votes and every head under each protocol, on the same folds."""
    from genderfusion.heads import MajorityVote, WeightedVote

    results: list[Result] = []

    def add(r: Result):
        results.append(r)
        log(f"  {r.method:<28} {r.protocol:<10} acc {r.accuracy(data.y):.4f}  ({r.seconds:.1f} s)")

    for s in data.sources:
        if s.train_logit is not None:
            label = "out-of-fold logit" if s.kind == FINETUNED else "own classifier"
            add(Result(s.name, label, 1 / (1 + np.exp(-s.train_logit.astype(np.float64))), 0.0))
        if probe is not None:
            one = FusionData(data.ids, data.y, data.fold, data.test_ids, [s], excluded=data.excluded)
            if s.kind == FINETUNED:
                add(_timed(f"{s.name} (probe)", "per-fold", lambda: cv_per_fold(one, probe)))
            else:
                add(_timed(f"{s.name} (probe)", "global", lambda: cv_global(one, probe)))
    if len(logit_sources(data)) >= 2:
        L = logit_matrix(data)
        add(_timed("vote", "global", lambda: cv_global(data, lambda b: MajorityVote(), L, None)))
        add(_timed("weighted-vote", "global", lambda: cv_global(data, lambda b: WeightedVote(), L, None)))
    has_finetuned = any(s.kind == FINETUNED for s in data.sources)
    pooled = (pooled_matrix(data.sources), pooled_blocks(data.sources)) if has_finetuned and "pooled" in protocols \
        else None
    for name, factory in heads.items():
        for protocol in protocols:
            if protocol == "per-fold" and has_finetuned:
                add(_timed(name, "per-fold", lambda: cv_per_fold(data, factory)))
            elif protocol == "global":
                add(_timed(name, "global", lambda: cv_global(data, factory)))
            elif protocol == "pooled" and pooled is not None:
                add(_timed(name, "pooled", lambda: cv_global(data, factory, *pooled)))
    return results

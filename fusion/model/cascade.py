"""A confidence cascade: a cheap head on a few sources decides the images it is sure of, and only the others go on
to every source and the full head.

The band of the cheap head's P(female) that sends an image on is chosen on out-of-fold predictions: the widest
exit (most rows decided early, from the most confident in) that never adds more than `tolerance` x rows errors to
the full head's on the way. Its accuracy is measured nested: each fold's rows are decided with a band chosen on the
other folds' rows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from genderfusion.heads import HEADS
from genderfusion.heads.second_stage import in_band
from genderfusion.heads.schema import band_spec, items, number, text
from genderfusion.heads.state import Arrays, Stateful

from genderfusion.fusion.model.features import FusionData, Outputs
from genderfusion.fusion.model.protocol import cv_global, global_blocks, global_matrix, global_test_matrix, head_factory

DEFAULT_TOLERANCE = 0.0005  # 0.05 accuracy points


def _cuts(p: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows taken in the order of `p` (most confident first): the threshold that lets the first i rows exit
    (i = 0..n; 0.5 after the last) and the cost of cutting there: the most errors added by any cut on the way
    (the running maximum of cumulative `d`, so a cut never reaches past a stretch where the cheap head is worse by
    hoping that rows further in make up for it); infinite between tied values, which no threshold can split."""
    tied = np.zeros(len(p) + 1, bool)
    tied[1:-1] = p[1:] == p[:-1]
    added = np.concatenate([[0], np.cumsum(d)]).astype(np.float64)
    cost = np.maximum.accumulate(np.where(tied, -np.inf, added))  # over the cuts a threshold can make
    cost[tied] = np.inf
    return np.concatenate([p, [0.5]]), cost


def choose_band(p_cheap: np.ndarray, p_full: np.ndarray, y: np.ndarray,
                tolerance: float = DEFAULT_TOLERANCE) -> tuple[float, float]:
    """(lo, hi): rows with lo <= P <= hi go on to the full head, the others exit with the cheap head's label.

    Rows exit from the most confident in, on each side of 0.5. d = 1 where the cheap head is wrong and the full one
    right, -1 for the reverse; the band lets the most rows exit such that no narrower exit on the way (no pair of
    shallower cuts) adds more than tolerance x rows errors; ties go to the lower cost."""
    y = np.asarray(y).astype(bool)
    d = ((p_cheap >= 0.5) != y).astype(np.int64) - ((p_full >= 0.5) != y)
    budget = np.floor(tolerance * len(y) + 1e-9)
    low = np.flatnonzero(p_cheap < 0.5)
    low = low[np.argsort(p_cheap[low], kind="stable")]  # exit from the lowest P up
    high = np.flatnonzero(p_cheap > 0.5)
    high = high[np.argsort(-p_cheap[high], kind="stable")]  # and from the highest P down
    lo_at, lo_cost = _cuts(p_cheap[low], d[low])
    hi_at, hi_cost = _cuts(p_cheap[high], d[high])
    # the last cut on the high side within what the low side leaves: the finite costs are non-decreasing
    reach = np.maximum.accumulate(np.where(np.isfinite(hi_cost), hi_cost, -np.inf))
    j = np.searchsorted(reach, budget - lo_cost, side="right") - 1
    while True:  # step back over tied cuts (infinite cost)
        tied = (j >= 0) & ~np.isfinite(hi_cost[np.maximum(j, 0)])
        if not tied.any():
            break
        j = np.where(tied, j - 1, j)
    valid = np.isfinite(lo_cost) & (j >= 0)  # (0, 0) always is: nothing exits
    n_exit = np.where(valid, np.arange(len(lo_cost)) + j, -1)
    cost = np.where(valid, lo_cost + hi_cost[np.maximum(j, 0)], np.inf)
    i = int(np.lexsort((cost, -n_exit))[0])
    return float(lo_at[i]), float(hi_at[j[i]])  # the first row kept on each side (0.5 when all of a side exit)


def exits(p_cheap: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Rows the cheap head decides (P outside the band)."""
    return ~in_band(p_cheap, band)


def cascade_cv(p_cheap: np.ndarray, p_full: np.ndarray, y: np.ndarray, fold: np.ndarray,
               tolerance: float = DEFAULT_TOLERANCE, trainable: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Held-out P(female) of the cascade and its exit mask: each fold's rows decided with a band chosen on the
    other folds' out-of-fold predictions (of `trainable` rows only)."""
    p, out = np.asarray(p_full, np.float64).copy(), np.zeros(len(y), bool)
    trainable = np.ones(len(y), bool) if trainable is None else trainable
    for f in np.unique(fold):
        rest, here = (fold != f) & trainable, fold == f
        band = choose_band(p_cheap[rest], p_full[rest], y[rest], tolerance)
        out[here] = exits(p_cheap[here], band)
    p[out] = p_cheap[out]
    return p, out


class Cascade(Stateful):
    """The cheap stage of a cascade: a head in the global protocol (frozen features, fine-tuned logits) on a few
    of the model's sources, and the band of its P(female) inside which an image goes on to the full head."""

    def __init__(self, sources: Sequence[str], head: str = "logistic", tolerance: float = DEFAULT_TOLERANCE):
        self.sources = sources
        self.head = head
        self.tolerance = tolerance

    _params = {"sources": items(text(), 1, 64), "head": text(tuple(HEADS)), "tolerance": number(0, 1)}
    _fields = {"band_": band_spec}
    _state_json = ("band_",)
    _state_arrays = ("oof_", "cv_", "cv_exits_")
    _state_children = {"head_": tuple(HEADS.values())}

    def _restore(self, meta: dict, arrays: Arrays) -> None:
        self.band_ = tuple(self.band_)

    def fit(self, data: FusionData, p_full: np.ndarray) -> "Cascade":
        """Fit on the training rows; `p_full`: the full model's out-of-fold P(female) of each row."""
        cheap = data.only(list(self.sources))
        make = head_factory(self.head)
        use = data.trainable
        self.oof_ = cv_global(cheap, make)
        self.head_ = make(global_blocks(cheap.sources)).fit(global_matrix(cheap.sources)[use], data.y[use])
        self.band_ = choose_band(self.oof_[use], p_full[use], data.y[use], self.tolerance)
        self.cv_, self.cv_exits_ = cascade_cv(self.oof_, p_full, data.y, data.fold, self.tolerance, use)
        return self

    def predict_proba(self, outputs: list[Outputs]) -> np.ndarray:
        """P(female) of the cheap head from its sources' outputs (in `sources` order)."""
        return self.head_.predict_proba(global_test_matrix(outputs))[:, 1]

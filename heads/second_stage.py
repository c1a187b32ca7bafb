"""A second stage for doubtful predictions: the rows whose first-stage P(female) falls in a band are re-examined by
a distance-weighted vote of their nearest training faces in a descriptor space (the frozen sources' features, each
block standardised and balanced; faiss, exact search)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._checks import FaissIndexPickle, index_vectors
from .blocks import BlockScaler
from .schema import BLOCKS, band_spec, integer, items
from .state import Arrays, State, StateError, Stateful

DEFAULT_BAND = (0.45, 0.55)  # the doubtful band of P(female): a model's default, and the second stage's
SEARCH_BLOCK = 32  # queries per faiss search: a row's neighbours do not depend on the call's size


def in_band(p: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    return (p >= band[0]) & (p <= band[1])


def _search(index, Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    found = [index.search(Z[i:i + SEARCH_BLOCK], k) for i in range(0, len(Z), SEARCH_BLOCK)]
    if not found:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def _index(X: np.ndarray):
    import faiss

    index = faiss.IndexFlatL2(X.shape[1])
    index.add(np.ascontiguousarray(X, np.float32))
    return index


def vote(d2: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """P(female) from the k nearest labels, each weighted by 1 / (distance + 1e-3)."""
    w = 1.0 / (np.sqrt(np.maximum(d2[:, :k], 0)) + 1e-3)
    return (w * labels[:, :k]).sum(1) / w.sum(1)


class KnnSecondStage(Stateful, FaissIndexPickle, BaseEstimator):
    """fit(X, y, p_first, fold): X descriptors of the training rows (blocks: widths of its sources), p_first their out-of-fold first-stage P(female),
    fold their folds. k is chosen among `ks` by the accuracy on the training rows inside the band, each voted on by
    the rows of the other folds; predict_proba replaces P inside the band by the vote of all training rows."""

    def __init__(self, band: tuple[float, float] = DEFAULT_BAND, ks: tuple[int, ...] = (5, 10, 20),
                 blocks: list[int] | None = None):
        self.band = band
        self.ks = ks
        self.blocks = blocks

    _params = {"band": band_spec, "ks": items(integer(1, 1 << 16), 1, 64), "blocks": BLOCKS}
    _fields = {"k_": integer(1, 1 << 16), "n_selection_rows_": integer(0, 1 << 40)}
    _state_json = ("k_", "n_selection_rows_")
    _state_arrays = ("y_",)
    _state_children = {"scaler_": (BlockScaler,)}

    def fit(self, X, y, p_first, fold) -> "KnnSecondStage":
        self.scaler_ = BlockScaler(self.blocks).fit(X)
        X = self.scaler_.transform(X).astype(np.float32)
        y, fold = np.asarray(y), np.asarray(fold)
        doubtful = in_band(np.asarray(p_first), self.band)
        kmax = max(self.ks)
        self.scores_ = {k: [] for k in self.ks}
        for f in np.unique(fold):
            q = np.flatnonzero(doubtful & (fold == f))
            pool = np.flatnonzero(fold != f)
            if len(q) == 0 or len(pool) < kmax:
                continue
            d2, nn = _search(_index(X[pool]), X[q], kmax)
            for k in self.ks:
                self.scores_[k] += ((vote(d2, y[pool][nn], k) >= 0.5) == y[q]).tolist()
        acc = {k: float(np.mean(v)) if v else 0.0 for k, v in self.scores_.items()}
        self.k_ = max(self.ks, key=lambda k: (acc[k], -k))  # ties: the smaller k
        self.selection_accuracy_ = acc
        self.n_selection_rows_ = int(len(self.scores_[self.ks[0]]))
        self.index_ = _index(X)
        self.y_ = y.astype(np.float64)
        return self

    def _extra_state(self) -> State:
        return ({"selection_accuracy_": [[k, a] for k, a in self.selection_accuracy_.items()]},
                {"vectors": index_vectors(self.index_),
                 **{f"scores.{k}": np.array(v, bool) for k, v in self.scores_.items()}})

    def _restore(self, meta: dict, arrays: Arrays) -> None:
        self.selection_accuracy_ = {k: a for k, a in meta.get("selection_accuracy_", [])}
        self.scores_ = {k: arrays[f"scores.{k}"].tolist() for k in self.ks}
        vectors = arrays["vectors"]
        if vectors.ndim != 2 or len(vectors) != len(self.y_):
            raise StateError(f"KnnSecondStage: {vectors.shape} vectors for {len(self.y_)} labels")
        self.index_ = _index(vectors)

    def predict_proba(self, X, p_first) -> np.ndarray:
        """Final P(female) [M]: the first stage's outside the band, the vote inside."""
        check_is_fitted(self)
        p = np.asarray(p_first, np.float64).copy()
        q = np.flatnonzero(in_band(p, self.band))
        if len(q):
            d2, nn = _search(self.index_, self.scaler_.transform(np.asarray(X)[q]).astype(np.float32), self.k_)
            p[q] = vote(d2, self.y_[nn], self.k_)
        return p

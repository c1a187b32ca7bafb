"""kNN head on faiss: L2-normalised features, inner-product search; k and weighting chosen by leave-one-out."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._checks import BinaryMixin, FaissIndexPickle, fit_input, index_vectors, predict_input
from .blocks import BlockScaler
from .schema import FEATURES, SCALING, integer, items, text
from .state import Arrays, State, StateError, Stateful

WEIGHTINGS = ("uniform", "similarity")


SEARCH_BLOCK = 32  # queries per faiss search at prediction


def _normalise(Z: np.ndarray) -> np.ndarray:
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


class KNNHead(Stateful, FaissIndexPickle, BinaryMixin, ClassifierMixin, BaseEstimator):
    """ks / weightings: candidates, chosen by leave-one-out accuracy on the training rows.

    An exact index (IndexFlatIP) by default; an IVF index when rows exceed ivf_threshold.
    """

    def __init__(self, ks=(5, 15, 31, 63), weightings=("uniform", "similarity"), ivf_threshold: int = 50_000,
                 nprobe: int = 16, blocks=None, pca=None, balance: bool = True, random_state: int = 0):
        self.ks = ks
        self.weightings = weightings
        self.ivf_threshold = ivf_threshold
        self.nprobe = nprobe
        self.blocks = blocks
        self.pca = pca
        self.balance = balance
        self.random_state = random_state

    _params = {"ks": items(integer(1, 1 << 16), 1, 64), "weightings": items(text(WEIGHTINGS), 1, 2),
               "ivf_threshold": integer(1, 1 << 40), "nprobe": integer(1, 1 << 16), **SCALING}
    _fields = {"n_features_in_": FEATURES, "k_": integer(1, 1 << 16), "weighting_": text(WEIGHTINGS)}
    _state_json = ("n_features_in_", "k_", "weighting_")
    _state_arrays = ("classes_", "y_")
    _state_children = {"scaler_": (BlockScaler,)}

    def _index(self, Z: np.ndarray, centroids: np.ndarray | None = None):
        """An exact index of Z; an IVF one above ivf_threshold rows, or when its `centroids` are given (a saved
        index rebuilt: the same lists, so the same neighbours)."""
        import faiss

        d = Z.shape[1]
        if centroids is None and len(Z) <= self.ivf_threshold:
            index = faiss.IndexFlatIP(d)
        else:
            quantizer = faiss.IndexFlatIP(d)
            nlist = int(np.sqrt(len(Z))) if centroids is None else len(centroids)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            if centroids is None:
                index.cp.seed = self.random_state
                index.train(Z)
            else:
                quantizer.add(np.ascontiguousarray(centroids, np.float32))
                index.is_trained = True
            index.nprobe = self.nprobe
        index.add(Z)
        return index

    def _extra_state(self) -> State:
        import faiss

        index = faiss.downcast_index(self.index_)
        arrays = {"vectors": index_vectors(index)}
        if isinstance(index, faiss.IndexIVF):
            arrays["centroids"] = index_vectors(faiss.downcast_index(index.quantizer))
        return {"cv_scores_": [[k, w, acc] for (k, w), acc in self.cv_scores_.items()]}, arrays

    def _restore(self, meta: dict, arrays: Arrays) -> None:
        self.cv_scores_ = {(k, w): acc for k, w, acc in meta.get("cv_scores_", [])}
        vectors = np.ascontiguousarray(arrays["vectors"], np.float32)
        if vectors.ndim != 2 or len(vectors) != len(self.y_):
            raise StateError(f"KNNHead: {vectors.shape} vectors for {len(self.y_)} labels")
        self.index_ = self._index(vectors, arrays["centroids"] if "centroids" in arrays else None)

    @staticmethod
    def _vote(sims: np.ndarray, labels: np.ndarray, k: int, weighting: str) -> np.ndarray:
        s, lab = sims[:, :k], labels[:, :k]
        w = np.maximum(s + 1.0, 1e-6) if weighting == "similarity" else np.ones_like(s)
        valid = lab >= 0
        return (w * (lab == 1) * valid).sum(1) / np.maximum((w * valid).sum(1), 1e-12)

    def fit(self, X, y):
        X, y = fit_input(self, X, y)
        self.scaler_ = BlockScaler(self.blocks, self.pca, self.balance, self.random_state).fit(X)
        Z = _normalise(self.scaler_.transform(X))
        self.index_ = self._index(Z)
        self.y_ = y
        ks = [k for k in self.ks if k < len(y)] or [max(1, len(y) - 1)]
        sims, nn = self.index_.search(Z, max(ks) + 1)
        self_hit = nn == np.arange(len(y))[:, None]  # leave each row out of its own vote
        keep = ~self_hit
        keep[:, -1] &= self_hit.any(1)  # drop the extra column when the row itself was not found
        sims = sims[keep].reshape(len(y), -1)
        labels = np.where(nn >= 0, y[np.maximum(nn, 0)], -1)[keep].reshape(len(y), -1)
        best, self.cv_scores_ = -1.0, {}
        for k in ks:
            for weighting in self.weightings:
                acc = float(((self._vote(sims, labels, k, weighting) >= 0.5) == y).mean())
                self.cv_scores_[(k, weighting)] = acc
                if acc > best:
                    best, self.k_, self.weighting_ = acc, k, weighting
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        Z = _normalise(self.scaler_.transform(predict_input(self, X)))
        # faiss's BLAS inner products depend on the query block in their last bits, which can swap near-tied
        # neighbours: fixed blocks keep a row's prediction independent of the call's size (in multiples of it)
        found = [self.index_.search(Z[i:i + SEARCH_BLOCK], self.k_) for i in range(0, len(Z), SEARCH_BLOCK)]
        sims = np.concatenate([f[0] for f in found]) if found else np.empty((0, self.k_), np.float32)
        nn = np.concatenate([f[1] for f in found]) if found else np.empty((0, self.k_), np.int64)
        labels = np.where(nn >= 0, self.y_[np.maximum(nn, 0)], -1)
        p = self._vote(sims, labels, self.k_, self.weighting_)
        return np.column_stack([1 - p, p])

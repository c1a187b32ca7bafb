"""Per-source scaling of concatenated features, so that a wide source does not drown a narrow one."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted, validate_data

from .schema import FEATURES, SCALING, items, number
from .state import Arrays, State, StateError, Stateful


class BlockScaler(Stateful, TransformerMixin, BaseEstimator):
    """Standardise each feature, then optionally reduce each source block by PCA and weight it.

    blocks: widths of the consecutive source blocks (sum = n_features); None means one block.
    pca: keep at most this many components per block (None: no reduction).
    balance: scale each block by 1/sqrt(width) so that every source has the same total variance.
    """

    def __init__(self, blocks: list[int] | None = None, pca: int | None = None, balance: bool = True,
                 random_state: int = 0):
        self.blocks = blocks
        self.pca = pca
        self.balance = balance
        self.random_state = random_state

    _params = SCALING
    _fields = {"n_features_in_": FEATURES, "widths_": items(FEATURES, 1, 4096),
               "weights_": items(number(0, open_lo=True), 1, 4096)}
    _state_json = ("n_features_in_", "widths_", "weights_")
    _state_arrays = ("mean_", "scale_")

    def _widths(self, n_features: int) -> list[int]:
        widths = list(self.blocks) if self.blocks is not None else [n_features]
        if sum(widths) != n_features:
            raise ValueError(f"block widths {widths} sum to {sum(widths)}, but X has {n_features} features")
        return widths

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        self.widths_ = self._widths(X.shape[1])
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0)
        self.scale_[self.scale_ < 1e-12] = 1.0
        Z = (X - self.mean_) / self.scale_
        self.projections_, self.weights_ = [], []  # per block: None, or the PCA's (mean, components)
        start = 0
        for w in self.widths_:
            block = Z[:, start:start + w]
            projection = None
            if self.pca is not None and w > self.pca and min(block.shape) > self.pca:
                pca = PCA(self.pca, random_state=self.random_state).fit(block)
                projection = (pca.mean_, pca.components_)
                block = _project(block, projection)
            self.projections_.append(projection)
            var = float(block.var(0).sum()) or 1.0
            self.weights_.append(1.0 / np.sqrt(var) if self.balance else 1.0)
            start += w
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        Z = (X - self.mean_) / self.scale_
        out, start = [], 0
        for w, projection, weight in zip(self.widths_, self.projections_, self.weights_):
            block = Z[:, start:start + w]
            out.append((block if projection is None else _project(block, projection)) * weight)
            start += w
        return np.hstack(out)

    @property
    def n_features_out_(self) -> int:
        """Columns of transform's output: each block's width, or its PCA components."""
        check_is_fitted(self)
        return sum(w if p is None else len(p[1]) for w, p in zip(self.widths_, self.projections_))

    def _extra_state(self) -> State:
        arrays = {}
        for i, projection in enumerate(self.projections_):
            if projection is not None:
                arrays[f"pca{i}.mean"], arrays[f"pca{i}.components"] = projection
        return {}, arrays

    def _restore(self, meta: dict, arrays: Arrays) -> None:
        if sum(self.widths_) != self.n_features_in_ or len(self.weights_) != len(self.widths_) or \
                self.mean_.shape != (self.n_features_in_,) or self.scale_.shape != self.mean_.shape:
            raise StateError(f"BlockScaler: widths {self.widths_}, {len(self.weights_)} weights and means of shape "
                             f"{self.mean_.shape} do not fit {self.n_features_in_} features")
        if not (self.scale_ > 0).all():
            raise StateError(f"BlockScaler: scale_ holds {int((self.scale_ <= 0).sum())} value(s) that are not above "
                             "0 (a feature divided by zero)")
        self.projections_ = [(arrays[f"pca{i}.mean"], arrays[f"pca{i}.components"]) if f"pca{i}.mean" in arrays
                             else None for i in range(len(self.widths_))]


def _project(block: np.ndarray, projection: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    mean, components = projection
    return (block - mean) @ components.T

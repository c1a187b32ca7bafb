"""Per-source scaling of concatenated features, so that a wide source does not drown a narrow one."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted, validate_data


class BlockScaler(TransformerMixin, BaseEstimator):
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
        self.pcas_, self.weights_ = [], []
        start = 0
        for w in self.widths_:
            block = Z[:, start:start + w]
            pca = None
            if self.pca is not None and w > self.pca and min(block.shape) > self.pca:
                pca = PCA(self.pca, random_state=self.random_state).fit(block)
                block = pca.transform(block)
            self.pcas_.append(pca)
            var = float(block.var(0).sum()) or 1.0
            self.weights_.append(1.0 / np.sqrt(var) if self.balance else 1.0)
            start += w
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        Z = (X - self.mean_) / self.scale_
        out, start = [], 0
        for w, pca, weight in zip(self.widths_, self.pcas_, self.weights_):
            block = Z[:, start:start + w]
            out.append((pca.transform(block) if pca is not None else block) * weight)
            start += w
        return np.hstack(out)

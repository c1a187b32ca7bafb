"""Voting baselines over the sources' own logits (one column per source, logit > 0 means class 1)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._checks import BinaryMixin, fit_input, predict_input
from .state import Stateful


class MajorityVote(Stateful, BinaryMixin, ClassifierMixin, BaseEstimator):
    """Each source votes with the sign of its logit; ties go to the mean logit's sign."""

    _state_json = ("n_features_in_",)
    _state_arrays = ("classes_", "weights_")

    def fit(self, X, y):
        fit_input(self, X, y)
        self.weights_ = np.ones(self.n_features_in_)
        return self

    def _score(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = predict_input(self, X)
        votes = (X > 0).astype(float)
        share = votes @ self.weights_ / self.weights_.sum()
        tie = np.isclose(share, 0.5)
        share[tie] = 0.5 + 1e-6 * np.sign(X[tie] @ self.weights_)
        return share

    def predict_proba(self, X):
        p = self._score(X)
        return np.column_stack([1 - p, p])


class WeightedVote(MajorityVote):
    """Better sources get more votes: weight = log-odds of the source's accuracy on the training rows."""

    _state_arrays = ("classes_", "weights_", "accuracies_")

    def fit(self, X, y):
        X, y_idx = fit_input(self, X, y)
        acc = ((X > 0).astype(int) == y_idx[:, None]).mean(0)
        acc = np.clip(acc, 1e-3, 1 - 1e-3)
        self.accuracies_ = acc
        self.weights_ = np.maximum(np.log(acc / (1 - acc)), 0.0)
        if self.weights_.sum() == 0:
            self.weights_ = np.ones_like(acc)
        return self

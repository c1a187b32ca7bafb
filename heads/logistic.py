"""Logistic regression head: per-source scaling, then L2 logistic regression with C chosen by inner CV."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from ._checks import BinaryMixin, fit_input, predict_input
from .blocks import BlockScaler
from .schema import FEATURES, SCALING, anything, integer, items, number
from .state import Arrays, State, StateError, Stateful


class LogisticHead(Stateful, BinaryMixin, ClassifierMixin, BaseEstimator):
    """Cs: candidate inverse regularisation strengths; the best by inner_cv-fold accuracy is refit on all rows."""

    def __init__(self, Cs=(0.001, 0.01, 0.1, 1.0), inner_cv: int = 3, blocks=None, pca=None, balance: bool = True,
                 max_iter: int = 300, random_state: int = 0):
        self.Cs = Cs
        self.inner_cv = inner_cv
        self.blocks = blocks
        self.pca = pca
        self.balance = balance
        self.max_iter = max_iter
        self.random_state = random_state

    _params = {"Cs": items(number(0, open_lo=True), 1, 64), "inner_cv": integer(2, 1000),
               "max_iter": integer(1, 10**7), **SCALING}
    _fields = {"n_features_in_": FEATURES, "C_": number(0, open_lo=True), "cv_scores_": anything}
    _state_json = ("n_features_in_", "C_", "cv_scores_")
    _state_arrays = ("classes_", "n_iter_")
    _state_children = {"scaler_": (BlockScaler,)}
    _state_optional = ("cv_scores_",)

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=self.max_iter)

    def fit(self, X, y):
        X, y = fit_input(self, X, y)
        self.scaler_ = BlockScaler(self.blocks, self.pca, self.balance, self.random_state).fit(X)
        Z = self.scaler_.transform(X)
        Cs = list(self.Cs)
        n_splits = min(self.inner_cv, int(np.bincount(y).min()))
        if len(Cs) > 1 and n_splits >= 2:
            cv = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)
            scores = np.zeros(len(Cs))
            for tr, va in cv.split(Z, y):
                for i, C in enumerate(Cs):
                    scores[i] += self._model(C).fit(Z[tr], y[tr]).score(Z[va], y[va])
            self.cv_scores_ = scores / n_splits
            self.C_ = Cs[int(np.argmax(scores))]
        else:
            self.C_ = Cs[0]
        self.model_ = self._model(self.C_).fit(Z, y)
        self.n_iter_ = self.model_.n_iter_
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        return self.model_.predict_proba(self.scaler_.transform(predict_input(self, X)))

    def decision_function(self, X):
        check_is_fitted(self)
        return self.model_.decision_function(self.scaler_.transform(predict_input(self, X)))

    def _extra_state(self) -> State:
        return {}, {"coef": self.model_.coef_, "intercept": self.model_.intercept_}

    def _restore(self, meta: dict, arrays: Arrays) -> None:
        width = self.scaler_.n_features_out_
        if arrays["coef"].shape != (1, width) or arrays["intercept"].shape != (1,):
            raise StateError(f"LogisticHead: coef of shape {arrays['coef'].shape} and intercept of shape "
                             f"{arrays['intercept'].shape} for {width} scaled features")
        self.model_ = self._model(self.C_)  # fitted on the labels' indices 0, 1
        self.model_.classes_, self.model_.n_features_in_ = np.arange(2), arrays["coef"].shape[1]
        self.model_.coef_, self.model_.intercept_, self.model_.n_iter_ = arrays["coef"], arrays["intercept"], \
            self.n_iter_

"""MLP head (torch): per-source scaling, one hidden layer with dropout, weight decay, early stopping."""
from __future__ import annotations

import contextlib

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from ._checks import BinaryMixin, fit_input, predict_input
from .blocks import BlockScaler
from .schema import FEATURES, SCALING, anything, integer, number
from .state import Arrays, State, StateError, Stateful


@contextlib.contextmanager
def _threads(n: int):
    """Run torch on n threads: a small MLP is many times faster on one thread than on two busy cores."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class MLPHead(Stateful, BinaryMixin, ClassifierMixin, BaseEstimator):
    """Early stopping watches the loss on an inner validation split (val_fraction of the training rows)."""

    def __init__(self, hidden: int = 256, dropout: float = 0.3, weight_decay: float = 1e-3, lr: float = 1e-3,
                 max_epochs: int = 60, patience: int = 5, batch_size: int = 256, val_fraction: float = 0.15,
                 blocks=None, pca=None, balance: bool = True, n_threads: int = 1, random_state: int = 0):
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.blocks = blocks
        self.pca = pca
        self.balance = balance
        self.n_threads = n_threads
        self.random_state = random_state

    _params = {"hidden": integer(1, 1 << 16), "dropout": number(0, 1, open_hi=True), "weight_decay": number(0),
               "lr": number(0, open_lo=True), "max_epochs": integer(1, 10**6), "patience": integer(1, 10**6),
               "batch_size": integer(1, 1 << 24), "val_fraction": number(0, 1, True, True),
               "n_threads": integer(1, 4096), **SCALING}
    _fields = {"n_features_in_": FEATURES, "history_": anything, "n_epochs_": integer(0, 10**6)}
    _state_json = ("n_features_in_", "history_", "n_epochs_")
    _state_arrays = ("classes_",)
    _state_children = {"scaler_": (BlockScaler,)}

    def _net(self, d: int):
        from torch import nn

        return nn.Sequential(nn.Dropout(self.dropout / 2), nn.Linear(d, self.hidden), nn.ReLU(),
                             nn.Dropout(self.dropout), nn.Linear(self.hidden, 1))

    def fit(self, X, y):
        import torch

        # weights and dropout draw from a forked RNG: the caller's torch RNG state and thread count are left as found
        with _threads(self.n_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            return self._fit(X, y)

    def _fit(self, X, y):
        import torch
        import torch.nn.functional as F

        X, y = fit_input(self, X, y)
        self.scaler_ = BlockScaler(self.blocks, self.pca, self.balance, self.random_state).fit(X)
        Z = self.scaler_.transform(X).astype(np.float32)
        strat = y if np.bincount(y).min() >= 2 else None
        tr, va = train_test_split(np.arange(len(y)), test_size=self.val_fraction, stratify=strat,
                                  random_state=self.random_state)
        gen = torch.Generator().manual_seed(self.random_state)
        net = self._net(Z.shape[1])
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        Zt, yt = torch.from_numpy(Z), torch.from_numpy(y.astype(np.float32))
        best, best_state, bad, self.history_ = np.inf, None, 0, []
        for epoch in range(self.max_epochs):
            net.train()
            order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                loss = F.binary_cross_entropy_with_logits(net(Zt[idx]).squeeze(1), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                val = float(F.binary_cross_entropy_with_logits(net(Zt[va]).squeeze(1), yt[va]))
            self.history_.append(val)
            if val < best - 1e-4:
                best, bad = val, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.n_epochs_ = len(self.history_)
        return self

    def _extra_state(self) -> State:
        return {}, {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}

    def _restore(self, meta: dict, arrays: Arrays) -> None:
        import torch

        width = self.scaler_.n_features_out_
        first = arrays["net.1.weight"].shape
        if first != (self.hidden, width):  # checked before the net is built: its size comes from these numbers
            raise StateError(f"MLPHead: a first layer of shape {first} for hidden {self.hidden} and {width} scaled "
                             "features")
        net = self._net(width)
        try:
            net.load_state_dict({k: torch.from_numpy(np.array(arrays[f"net.{k}"])) for k in net.state_dict()})
        except RuntimeError as exc:  # a shape that does not fit
            raise StateError(f"MLPHead: {str(exc).splitlines()[-1].strip()}") from None
        self.net_ = net.eval()

    def decision_function(self, X):
        import torch

        check_is_fitted(self)
        Z = self.scaler_.transform(predict_input(self, X)).astype(np.float32)
        with torch.no_grad(), _threads(self.n_threads):
            return self.net_(torch.from_numpy(Z)).squeeze(1).numpy().astype(np.float64)

    def predict_proba(self, X):
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p, p])

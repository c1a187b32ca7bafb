"""Does cleaning the training labels help? Nested CV: for each outer fold, suspects are ranked among its training
rows only (by inner out-of-fold P(label) and conflicting duplicates among those rows), the top ones are left out of
head training, and the held-out fold is scored on its original labels."""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from genderfusion.fusion.audit.duplicates import Duplicates
from genderfusion.fusion.model.features import FusionData
from genderfusion.fusion.model.protocol import global_blocks, global_matrix

LOG = logging.getLogger("genderfusion").info  # progress lines, unless the caller passes its own `log`

HeadFactory = Callable[[list[int]], object]


def conflict_bonus(y: np.ndarray, rows: np.ndarray, dups: Duplicates | None, weight: float = 1.0) -> np.ndarray:
    """weight for each of `rows` whose duplicate group holds, among `rows`, another label (0 elsewhere)."""
    bonus = np.zeros(len(rows))
    if dups is None:
        return bonus
    inside = np.zeros(len(y), bool)
    inside[rows] = True
    pos = {int(r): n for n, r in enumerate(rows)}
    for members in dups.groups():
        members = members[inside[members]]
        if len(set(y[members].tolist())) > 1:
            for m in members:
                bonus[pos[int(m)]] = weight
    return bonus


def cleaning_cv(data: FusionData, make_head: HeadFactory, cutoffs: Sequence[float],
                dups: Duplicates | None = None, log: Callable[[str], None] = LOG) -> dict[float, np.ndarray]:
    """Held-out P(female) of every row for each cut-off (a fraction of the training rows left out; 0 = none)."""
    X, blocks, y = global_matrix(data.sources), global_blocks(data.sources), data.y
    probs = {c: np.empty(len(y)) for c in cutoffs}
    for k in range(data.k):
        train = np.flatnonzero(data.fold != k)
        inner = np.empty(len(train))
        for j in sorted(set(data.fold[train].tolist())):
            fit, held = data.fold[train] != j, data.fold[train] == j
            inner[held] = make_head(blocks).fit(X[train[fit]], y[train[fit]]).predict_proba(X[train[held]])[:, 1]
        p_label = np.where(y[train] == 1, inner, 1 - inner)
        order = np.argsort(-((1 - p_label) + conflict_bonus(y, train, dups)), kind="stable")
        for c in cutoffs:
            keep = np.ones(len(train), bool)
            keep[order[:int(round(c * len(train)))]] = False
            head = make_head(blocks).fit(X[train[keep]], y[train[keep]])
            probs[c][data.fold == k] = head.predict_proba(X[data.fold == k])[:, 1]
        log(f"  fold {k}: inner CV done, {len(cutoffs)} cut-offs scored")
    return probs

"""The cascade's band choice against a brute-force search, and its nested CV."""
import numpy as np
import pytest

from genderfusion.fusion.model.cascade import cascade_cv, choose_band, exits


def _brute_force(p_cheap, p_full, y, tolerance):
    """(rows that exit, errors added) of the best band, trying every pair of thresholds: a band qualifies when no
    pair of shallower thresholds (fewer rows exiting on either side) adds more errors than the budget."""
    budget = int(np.floor(tolerance * len(y) + 1e-9))
    err_full = ((p_full >= 0.5) != y).sum()
    los = np.append(np.unique(p_cheap[p_cheap < 0.5]), 0.5)  # more rows exit as lo grows
    his = np.append(np.unique(p_cheap[p_cheap > 0.5])[::-1], 0.5)  # and as hi shrinks
    added, exits_n = np.zeros((len(los), len(his)), int), np.zeros((len(los), len(his)), int)
    for a, lo in enumerate(los):
        for b, hi in enumerate(his):
            out = (p_cheap < lo) | (p_cheap > hi)
            added[a, b] = ((np.where(out, p_cheap, p_full) >= 0.5) != y).sum() - err_full
            exits_n[a, b] = out.sum()
    worst = np.maximum.accumulate(np.maximum.accumulate(added, axis=0), axis=1)
    ok = worst <= budget
    best = max(zip(exits_n[ok], -added[ok]))
    return int(best[0]), int(-best[1])


@pytest.mark.parametrize("seed", range(6))
def test_choose_band_lets_as_many_rows_exit_as_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    n = 70
    y = rng.integers(0, 2, n)
    p_full = np.clip(y + rng.normal(0, 0.35, n), 0, 1)
    p_cheap = np.clip(y + rng.normal(0, 0.5, n), 0, 1).round(2)  # rounded: tied values, and 0, 1 and 0.5
    tolerance = [0.0, 0.03, 0.08][seed % 3]
    lo, hi = choose_band(p_cheap, p_full, y, tolerance)
    out = exits(p_cheap, (lo, hi))
    p = np.where(out, p_cheap, p_full)
    added = int(((p >= 0.5) != y).sum() - ((p_full >= 0.5) != y).sum())
    assert lo <= 0.5 <= hi
    assert (int(out.sum()), added) == _brute_force(p_cheap, p_full, y, tolerance)


def test_a_cheap_head_as_good_as_the_full_one_decides_every_row():
    y = np.array([0, 1] * 20)
    p = np.where(y == 1, 0.9, 0.1)
    assert exits(p, choose_band(p, p, y, 0.0)).all()
    # a cheap head wrong on its most confident row keeps that row (and every row less sure than it) in the band
    q = p.copy()
    q[0] = 0.99
    lo, hi = choose_band(q, p, y, 0.0)
    assert not exits(q, (lo, hi))[0] and exits(q, (lo, hi))[y == 0].sum() == 19


def test_cascade_cv_never_chooses_a_fold_band_on_that_fold():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    fold = np.arange(n) % 3
    p_full = np.clip(y + rng.normal(0, 0.3, n), 0, 1)
    p_cheap = np.clip(y + rng.normal(0, 0.45, n), 0, 1)
    p, out = cascade_cv(p_cheap, p_full, y, fold, 0.01)
    assert np.array_equal(p, np.where(out, p_cheap, p_full)) and 0 < out.mean() < 1
    flipped = np.where(fold == 1, 1 - y, y)  # labels of fold 1 changed: its own exits must not move
    _, out2 = cascade_cv(p_cheap, p_full, flipped, fold, 0.01)
    assert np.array_equal(out[fold == 1], out2[fold == 1]) and not np.array_equal(out[fold != 1], out2[fold != 1])
    # rows left out of head training (trainable False) do not choose the band either
    _, out3 = cascade_cv(p_cheap, p_full, y, fold, 0.01, trainable=fold != 2)
    _, out4 = cascade_cv(p_cheap, p_full, np.where(fold == 2, 1 - y, y), fold, 0.01, trainable=fold != 2)
    assert np.array_equal(out3, out4) and not np.array_equal(out3, out)

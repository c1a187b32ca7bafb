"""Duplicate groups among training rows: exact (equal pixel digests) and near (face descriptors closer than a
threshold read off the data's nearest-neighbour distances)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOURS = 5  # nearest neighbours searched per row for near duplicates
MIN_ROWS_FOR_THRESHOLD = 200  # fewer rows give no readable histogram: no near duplicates unless a threshold is given


def exact_pairs(digests: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """[P, 2] row pairs (i < j) with equal digests; each group of n rows gives its n-1 links to its first row."""
    keys = [bytes(d) for d in np.asarray(digests, np.uint8)]
    first: dict[bytes, int] = {}
    pairs = []
    for n, key in enumerate(keys):
        if valid is not None and not valid[n]:
            continue
        if key in first:
            pairs.append((first[key], n))
        else:
            first[key] = n
    return np.array(pairs, np.int64).reshape(-1, 2)


def nearest(X: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances [N, k] and row indices [N, k] of each row's k nearest other rows (exact faiss search)."""
    import faiss

    X = np.ascontiguousarray(X, np.float32)
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(X)
    d2, nn = index.search(X, min(k + 1, len(X)))
    d = np.sqrt(np.maximum(d2, 0))
    rows = np.arange(len(X))[:, None]
    self_hit = nn == rows
    order = np.argsort(self_hit, axis=1, kind="stable")  # the row itself (when found) moves to the end
    d, nn = np.take_along_axis(d, order, 1)[:, :-1], np.take_along_axis(nn, order, 1)[:, :-1]
    return d, nn


def valley_threshold(nn_dist: np.ndarray, bins_per_median: int = 50, smooth: int = 5, min_dip: float = 0.15) -> float:
    """The distance separating near duplicates from distinct photos, read off the histogram of nearest-neighbour
    distances (bins of median/bins_per_median, smoothed): the valley below the main mode with the deepest dip
    relative to the highest bin left of it. 0.0 when no valley dips by min_dip (one mode: no near duplicates) or
    there are fewer than MIN_ROWS_FOR_THRESHOLD distances."""
    d = np.asarray(nn_dist, np.float64)
    d = d[np.isfinite(d)]
    if len(d) < MIN_ROWS_FOR_THRESHOLD or np.median(d) <= 0:
        return 0.0
    width = float(np.median(d)) / bins_per_median
    d = d[d >= width]  # identical descriptors (exact duplicates, up to rounding) are counted apart
    edges = np.arange(0.0, np.quantile(d, 0.9) + width, width)
    hist = np.convolve(np.histogram(d, edges)[0].astype(float), np.ones(smooth) / smooth, mode="same")
    main = int(np.argmax(hist))
    left_max = np.maximum.accumulate(hist)
    best, valley = min_dip, None
    for v in range(1, main):
        if left_max[v] >= 0.02 * hist[main]:  # a mode of a handful of rows is noise
            dip = 1 - hist[v] / left_max[v]
            if dip > best:
                best, valley = dip, v
    return 0.0 if valley is None else float(edges[valley] + width / 2)


def near_pairs(d: np.ndarray, nn: np.ndarray, threshold: float) -> np.ndarray:
    """[P, 2] row pairs (i < j) among the searched neighbours closer than threshold."""
    rows, cols = np.nonzero(d < threshold)
    pairs = np.column_stack([rows, nn[rows, cols]])
    pairs = pairs[pairs[:, 1] >= 0]
    return np.unique(np.sort(pairs, axis=1), axis=0).reshape(-1, 2)


def group_ids(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph: a group id per row (singletons get their own)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = find(int(i)), find(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)])


def members(group: np.ndarray) -> list[np.ndarray]:
    """Row indices of every group of two or more rows, given a group id per row."""
    order = np.argsort(group, kind="stable")
    splits = np.flatnonzero(np.diff(group[order])) + 1
    return [g for g in np.split(order, splits) if len(g) > 1]


@dataclass
class Duplicates:
    """Exact and near duplicate links among training rows, and the groups they form."""

    exact: np.ndarray  # [P, 2]
    near: np.ndarray  # [Q, 2], pairs that are not exact duplicates
    threshold: float
    group: np.ndarray  # [N] group id (the group's lowest row)
    exact_group: np.ndarray  # [N] group id by exact links alone

    def groups(self) -> list[np.ndarray]:
        """Row indices of every group of two or more rows."""
        return members(self.group)


def find_duplicates(digests: np.ndarray, descriptors: np.ndarray, valid: np.ndarray | None = None,
                    threshold: float | None = None) -> Duplicates:
    """Exact duplicates by digest and near duplicates by descriptor distance (threshold None: valley_threshold)."""
    exact = exact_pairs(digests, valid)
    d, nn = nearest(descriptors)
    if valid is not None:
        d = np.where(valid[:, None] & valid[np.maximum(nn, 0)], d, np.inf)
    threshold = valley_threshold(d[:, 0][np.isfinite(d[:, 0])]) if threshold is None else threshold
    near = near_pairs(d, nn, threshold)
    exact_group = group_ids(len(d), exact)
    near = near[exact_group[near[:, 0]] != exact_group[near[:, 1]]]
    return Duplicates(exact, near, threshold, group_ids(len(d), np.vstack([exact, near])), exact_group)

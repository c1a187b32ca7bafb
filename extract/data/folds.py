"""One deterministic, stratified K-fold assignment per dataset, shared by every backbone."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..atomic import atomic_path
from ..errors import WorkspaceError
from .dataset import CompetitionData
from .groups import age_bucket
from .workspace import Workspace


def make_folds(labels: np.ndarray, k: int, seed: int, ages: np.ndarray | None = None) -> np.ndarray:
    """Assign each row a fold in [0, k), stratified by label (and age bucket when given)."""
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    counts = np.bincount(labels, minlength=2)
    if counts.min() < k:
        raise ValueError(f"cannot make {k} stratified folds: class counts are {counts.tolist()}")
    strata = labels * 100 + (age_bucket(ages) + 1 if ages is not None else 0)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return folds


@dataclass
class Folds:
    ids: list[str]
    fold: np.ndarray
    k: int
    seed: int

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, f in zip(self.ids, self.fold):
            h.update(f"{i},{f}\n".encode())
        return h.hexdigest()[:16]

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as fh:
                fh.write(f"# k={self.k} seed={self.seed}\nid,fold\n")
                fh.writelines(f"{i},{f}\n" for i, f in zip(self.ids, self.fold))

    @classmethod
    def read(cls, path) -> "Folds":
        with open(path) as fh:
            header = fh.readline()
            params = dict(kv.split("=") for kv in header.lstrip("# ").split())
            fh.readline()
            rows = [line.rstrip("\n").split(",") for line in fh if line.strip()]
        return cls([r[0] for r in rows], np.array([int(r[1]) for r in rows]), int(params["k"]), int(params["seed"]))

    def for_ids(self, ids: list[str]) -> np.ndarray:
        """Fold of each given id; every id must have one."""
        pos = {i: n for n, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise WorkspaceError(f"{len(missing)} training id(s) have no fold, e.g. {missing[:5]}; rerun with --new-folds")
        return self.fold[[pos[i] for i in ids]]


def ensure_folds(ws: Workspace, data: CompetitionData, k: int | None = None, seed: int | None = None,
                 new: bool = False) -> Folds:
    """Load the workspace's folds, or create them; another K or seed needs new=True."""
    if ws.folds_path.exists() and not new:
        folds = Folds.read(ws.folds_path)
        if (k is not None and k != folds.k) or (seed is not None and seed != folds.seed):
            raise WorkspaceError(
                f"{ws.folds_path} holds k={folds.k} seed={folds.seed}, but k={k} seed={seed} was asked for; "
                f"pass --new-folds to replace them (checkpoints of the old folds become unusable)"
            )
        folds.for_ids(data.train.ids)
        return folds
    k = 5 if k is None else k
    seed = 0 if seed is None else seed
    folds = Folds(list(data.train.ids), make_folds(data.train.labels, k, seed, data.ages()), k, seed)
    folds.save(ws.folds_path)
    return folds

"""One deterministic, stratified K-fold assignment per dataset, shared by every backbone."""
from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genderfusion.files.atomic import atomic_path

from ..errors import WorkspaceError
from .dataset import CompetitionData
from .groups import age_bucket
from .workspace import Workspace

log = logging.getLogger(__name__)


def make_folds(labels: np.ndarray, k: int, seed: int, ages: np.ndarray | None = None,
               groups: np.ndarray | None = None) -> np.ndarray:
    """Assign each row a fold in [0, k), stratified by label (and age bucket when given). Rows sharing a group id
    (duplicate images) share a fold; a group is stratified by its first row."""
    labels = np.asarray(labels)
    if groups is not None:
        groups = np.asarray(groups)
        _, first, unit = np.unique(groups, return_index=True, return_inverse=True)
        unit_folds = make_folds(labels[first], k, seed, None if ages is None else np.asarray(ages)[first])
        return unit_folds[unit.ravel()]
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
    groups: int = 0  # duplicate groups kept inside one fold

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, f in zip(self.ids, self.fold):
            h.update(f"{i},{f}\n".encode())
        return h.hexdigest()[:16]

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as fh:
                fh.write(f"# k={self.k} seed={self.seed}" + (f" groups={self.groups}" if self.groups else "")
                         + "\nid,fold\n")
                fh.writelines(f"{i},{f}\n" for i, f in zip(self.ids, self.fold))

    @classmethod
    def read(cls, path) -> "Folds":
        with open(path) as fh:
            header = fh.readline()
            params = dict(kv.split("=") for kv in header.lstrip("# ").split())
            fh.readline()
            rows = [line.rstrip("\n").split(",") for line in fh if line.strip()]
        return cls([r[0] for r in rows], np.array([int(r[1]) for r in rows]), int(params["k"]), int(params["seed"]),
                   int(params.get("groups", 0)))

    def for_ids(self, ids: list[str]) -> np.ndarray:
        """Fold of each given id; every id must have one."""
        pos = {i: n for n, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise WorkspaceError(f"{len(missing)} training id(s) have no fold, e.g. {missing[:5]}; rerun with new_folds=True")
        return self.fold[[pos[i] for i in ids]]


def duplicate_groups(path: Path, ids: list[str]) -> np.ndarray | None:
    """A group id per training row from audit-labels' duplicates.csv (its `ids` column), None without the file;
    ids the file names that are not training rows are an error naming them."""
    if not path.exists():
        return None
    pos = {i: n for n, i in enumerate(ids)}
    groups = np.arange(len(ids))
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            members = (row.get("ids") or "").split()
            unknown = [i for i in members if i not in pos]
            if unknown:
                raise WorkspaceError(f"{path}: ids {unknown[:5]} are not training rows of this dataset; rerun "
                                     "audit-labels or pass group_duplicates=False")
            rows = [pos[i] for i in members]
            if rows:
                groups[rows] = min(rows)
    return groups


def ensure_folds(ws: Workspace, data: CompetitionData, k: int | None = None, seed: int | None = None,
                 new: bool = False, group_duplicates: bool = True) -> Folds:
    """Load the workspace's folds, or create them; another K or seed needs new=True. New folds keep the duplicate
    groups of <workspace>/audit/duplicates.csv (audit-labels) inside one fold, unless group_duplicates=False."""
    if ws.folds_path.exists() and not new:
        folds = Folds.read(ws.folds_path)
        if (k is not None and k != folds.k) or (seed is not None and seed != folds.seed):
            raise WorkspaceError(
                f"{ws.folds_path} holds k={folds.k} seed={folds.seed}, but k={k} seed={seed} was asked for; "
                f"pass new_folds=True to replace them (checkpoints of the old folds become unusable)"
            )
        folds.for_ids(data.train.ids)
        return folds
    k = 5 if k is None else k
    seed = 0 if seed is None else seed
    groups = duplicate_groups(ws.root / "audit" / "duplicates.csv", data.train.ids) if group_duplicates else None
    n_groups = 0 if groups is None else int((np.bincount(groups) > 1).sum())
    if n_groups:
        log.info("new folds keep %d duplicate groups of %s inside one fold", n_groups, ws.root / "audit")
    folds = Folds(list(data.train.ids), make_folds(data.train.labels, k, seed, data.ages(), groups), k, seed, n_groups)
    folds.save(ws.folds_path)
    return folds

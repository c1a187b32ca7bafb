"""Loading several feature caches as one aligned, validated set of sources."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genderfusion.option_errors import option_error
from genderfusion.extract.cache import format as fc
from genderfusion.extract.data.workspace import Workspace, safe_name
from genderfusion.extract.sources.base import FINETUNED, FROZEN


class FeatureMismatchError(ValueError):
    """Caches that do not describe the same rows, labels or folds."""


@dataclass
class Outputs:
    """One source's outputs on rows to predict: features [S, M, D] and logits [S, M] of each feature space."""

    kind: str
    features: np.ndarray
    logits: np.ndarray | None


@dataclass
class Source:
    """One source's features and logits, aligned to the shared row order."""

    name: str
    kind: str  # extract.sources.base.FINETUNED | FROZEN
    attrs: dict
    train: np.ndarray  # [N, D]
    test: np.ndarray  # [S, M, D]
    train_logit: np.ndarray | None  # [N]
    test_logit: np.ndarray | None  # [S, M]

    @property
    def width(self) -> int:
        return self.train.shape[1]

    @property
    def n_spaces(self) -> int:
        return self.test.shape[0]

    @property
    def test_outputs(self) -> Outputs:
        return Outputs(self.kind, self.test, self.test_logit)


@dataclass
class FusionData:
    ids: np.ndarray
    y: np.ndarray
    fold: np.ndarray
    test_ids: np.ndarray
    sources: list[Source]
    skipped_ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))  # left out of every head
    excluded: np.ndarray | None = None  # [N] bool: rows no head trains on (--exclude); they are still evaluated

    @property
    def k(self) -> int:
        return int(self.fold.max()) + 1

    @property
    def trainable(self) -> np.ndarray:
        """[N] bool: rows a head may train on."""
        return np.ones(len(self.y), bool) if self.excluded is None else ~self.excluded

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise ValueError(f"no source {name!r} among {[s.name for s in self.sources]}")

    def only(self, names: list[str]) -> "FusionData":
        """The same rows with only the sources `names`, in that order."""
        return FusionData(self.ids, self.y, self.fold, self.test_ids, [self.source(n) for n in names],
                          self.skipped_ids, self.excluded)


def _check_finite(name: str, ids: np.ndarray, arr: np.ndarray | None, what: str, row_axis: int) -> None:
    if arr is None:
        return
    bad = ~np.isfinite(arr.astype(np.float32))
    if bad.any():
        row = np.argwhere(bad)[0][row_axis]
        raise ValueError(f"source {name}: non-finite value (NaN or Inf) in {what} at row id {ids[row]}")


def _align(ref_ids: np.ndarray, ids: np.ndarray, name: str, ref_name: str, split: str) -> np.ndarray:
    """Positions in `ids` of each reference id; a missing or extra id is an error naming the first."""
    pos = {i: n for n, i in enumerate(ids)}
    missing = [i for i in ref_ids if i not in pos]
    if missing or len(ids) != len(ref_ids):
        extra = sorted(set(ids) - set(ref_ids))
        first = f"id {missing[0]} is in {ref_name} but not in {name}" if missing else \
            f"id {extra[0]} is in {name} but not in {ref_name}"
        raise FeatureMismatchError(f"{split} rows differ between sources: {first}")
    return np.array([pos[i] for i in ref_ids])


def load_sources(workdir: str | Path, names: list[str]) -> FusionData:
    """Read the caches of `names`, aligned by id; ids, labels and folds must agree across them."""
    if not names:
        raise option_error(ValueError, "features", "none given; name the sources to fuse, e.g. a,b,c")
    names = [safe_name(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"a source is listed twice: {names}")
    ws = Workspace(workdir)
    sets = [fc.load(ws.features_path(n)) for n in names]
    ref = sets[0]
    rows = [_align(ref.train.ids, fs.train.ids, name, names[0], "train") for name, fs in zip(names, sets)]
    skipped = np.zeros(len(ref.train.ids), bool)
    for fs, tr in zip(sets, rows):
        skipped |= fs.train.fold[tr] < 0  # fold -1: a corrupt image skipped at extraction (--skip-bad) by any source
    keep = np.flatnonzero(~skipped)
    ids, y, fold = ref.train.ids[keep], ref.train.labels[keep], ref.train.fold[keep]
    sources = []
    for name, fs, all_rows in zip(names, sets, rows):
        tr = all_rows[keep]
        te = _align(ref.test.ids, fs.test.ids, name, names[0], "test")
        for what, mine in (("label", fs.train.labels[tr]), ("fold", fs.train.fold[tr])):
            theirs = y if what == "label" else fold
            if not np.array_equal(mine, theirs):
                j = int(np.flatnonzero(mine != theirs)[0])
                raise FeatureMismatchError(
                    f"{what}s disagree between {names[0]} and {name} at id {ids[j]}: {theirs[j]} vs {mine[j]}; "
                    "were they extracted from the same workspace and folds?")
        src = Source(name, fs.kind, fs.attrs, fs.train.features[tr], fs.test.features[:, te],
                     None if fs.train.logits is None else fs.train.logits[tr],
                     None if fs.test.logits is None else fs.test.logits[:, te])
        _check_finite(name, ids, src.train, "train features", 0)
        _check_finite(name, ref.test.ids, src.test, "test features", 1)
        _check_finite(name, ids, src.train_logit, "train logits", 0)
        _check_finite(name, ref.test.ids, src.test_logit, "test logits", 1)
        sources.append(src)
    spaces = {s.n_spaces for s in sources if s.kind == FINETUNED}
    if len(spaces) > 1:
        raise FeatureMismatchError(f"fine-tuned sources have different numbers of fold models: {spaces}")
    if spaces and spaces.pop() != int(fold.max()) + 1:
        raise FeatureMismatchError("fine-tuned sources' fold models do not match the folds of the rows")
    for f in range(int(fold.max()) + 1):
        if len(np.unique(y[fold == f])) < 2:
            raise ValueError(f"fold {f} holds only one class; a head cannot be trained there")
    return FusionData(ids, y, fold, ref.test.ids, sources, ref.train.ids[skipped])


def descriptors(data: FusionData) -> tuple[np.ndarray, list[int]]:
    """The second stage's descriptor of every training row: the frozen sources' features, and their widths."""
    frozen = [s for s in data.sources if s.kind == FROZEN]
    if not frozen:
        raise ValueError("the second stage needs a frozen source (its features are the same in every fold), e.g. "
                         "dlib-face-flip; the model has only fine-tuned ones")
    return np.hstack([s.train.astype(np.float32) for s in frozen]), [s.width for s in frozen]

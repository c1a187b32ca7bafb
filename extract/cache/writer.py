"""Filling a feature cache from a source: cache hits, incremental appends, resumable partial files, shards."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from genderfusion.files.atomic import atomic_path
from genderfusion.extract.locks import exclusive_lock

from ..sources.base import FINETUNED, FeatureSource, Input, library_versions
from . import format as fc

log = logging.getLogger(__name__)

PART_ROWS = 4096  # rows computed between two checkpoints of a partial file


@dataclass
class Rows:
    """The rows a cache file must hold, in dataset order."""

    train_ids: list[str]
    train_labels: np.ndarray
    train_fold: np.ndarray
    train_size: np.ndarray  # image file sizes and content digests: a replaced image is recomputed
    test_ids: list[str]
    test_size: np.ndarray
    train_digest: np.ndarray
    test_digest: np.ndarray
    train_index: np.ndarray = field(default=None)  # positions in the dataset split (for shards)
    test_index: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.train_index is None:
            self.train_index = np.arange(len(self.train_ids))
        if self.test_index is None:
            self.test_index = np.arange(len(self.test_ids))

    def shard(self, i: int, n: int) -> "Rows":
        """Slice i of n (contiguous) of both splits."""
        tr = np.array_split(np.arange(len(self.train_ids)), n)[i]
        te = np.array_split(np.arange(len(self.test_ids)), n)[i]
        return Rows([self.train_ids[j] for j in tr], self.train_labels[tr], self.train_fold[tr], self.train_size[tr],
                    [self.test_ids[j] for j in te], self.test_size[te], self.train_digest[tr], self.test_digest[te],
                    self.train_index[tr], self.test_index[te])

    def digest(self) -> str:
        h = hashlib.sha256()
        for x in (self.train_ids, self.train_labels, self.train_size, self.test_ids, self.test_size, self.train_digest,
                  self.test_digest):
            h.update(json.dumps([str(v) for v in x]).encode())
        return h.hexdigest()[:16]


@dataclass
class Outcome:
    path: Path
    status: str  # "hit", "appended", "computed"
    reason: str
    computed_rows: int
    seconds: float
    images_per_s: float | None


def _recipe_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _keep_map(old_ids, old_key, new_ids, new_key) -> np.ndarray:
    """For each new row, the index of the identical old row (same id and key), or -1."""
    pos = {i: n for n, i in enumerate(old_ids)}
    out = np.full(len(new_ids), -1, dtype=np.int64)
    for n, (i, k) in enumerate(zip(new_ids, new_key)):
        j = pos.get(i, -1)
        if j >= 0 and old_key[j] == k:
            out[n] = j
    return out


def _match_rows(old: fc.FeatureSet, rows: Rows) -> tuple[np.ndarray, np.ndarray, bool]:
    """For each wanted row, the index of the identical cached row or -1; and whether the cache holds exactly them."""
    def digests(f, split):  # caches written before content digests were recorded: every row counts as changed
        return f[f"{split}/digest"][()].tolist() if f"{split}/digest" in f else [None] * len(f[f"{split}/ids"])

    with fc.opened(old.path) as f:
        old_train_key = list(zip(f["train/labels"][()].tolist(), f["train/filesize"][()].tolist(), digests(f, "train")))
        old_test_key = list(zip(f["test/filesize"][()].tolist(), digests(f, "test")))
    keep_tr = _keep_map(old.train.ids, old_train_key, rows.train_ids,
                        list(zip(rows.train_labels.tolist(), rows.train_size.tolist(), rows.train_digest.tolist())))
    keep_te = _keep_map(old.test.ids, old_test_key, rows.test_ids,
                        list(zip(rows.test_size.tolist(), rows.test_digest.tolist())))
    same_rows = (len(old.train.ids) == len(rows.train_ids) and len(old.test.ids) == len(rows.test_ids)
                 and (keep_tr == np.arange(len(keep_tr))).all() and (keep_te == np.arange(len(keep_te))).all())
    # a frozen source's features do not depend on folds, but the file records them for the heads
    same_folds = old.kind == FINETUNED or (old.train.fold == rows.train_fold).all()
    return keep_tr, keep_te, bool(same_rows and same_folds)


@dataclass
class Update:
    """What an extraction must do to bring a cache up to date: which cached rows it keeps, and why."""

    old: fc.FeatureSet | None
    keep_train: np.ndarray  # per wanted row: the index of the identical cached row, or -1 (compute it)
    keep_test: np.ndarray
    reason: str
    hit: bool = False  # the cache holds exactly these rows with this recipe


def plan_update(path: Path, recipe: dict, rows: Rows, dtype: str = "float16", force: bool = False) -> Update:
    """Compare a cache with the recipe and rows wanted (no source is built, no image decoded, no torch)."""
    none_kept = Update(None, np.full(len(rows.train_ids), -1), np.full(len(rows.test_ids), -1), "")
    if force:
        none_kept.reason = "force=True"
        return none_kept
    if not path.exists():
        none_kept.reason = "no cache yet"
        return none_kept
    try:
        old = fc.load(path, with_features=False)  # a damaged (sealed) file is rebuilt, not reused or appended to
    except fc.CacheError as exc:
        log.warning("%s", exc)
        none_kept.reason = str(exc)
        return none_kept
    if old.attrs["recipe"] != recipe:
        none_kept.reason = f"recipe changed ({_recipe_diff(old.attrs['recipe'], recipe)})"
        return none_kept
    if old.attrs.get("dtype") != dtype:
        none_kept.reason = f"dtype changed ({old.attrs.get('dtype')} -> {dtype})"
        return none_kept
    try:
        keep_tr, keep_te, same = _match_rows(old, rows)
    except fc.CacheError as exc:
        log.warning("%s", exc)
        none_kept.reason = str(exc)
        return none_kept
    new_n = int((keep_tr < 0).sum() + (keep_te < 0).sum())
    reason = ("same recipe and rows" if same else
              f"{new_n} new or changed row(s)" if new_n else "rows removed or folds renumbered")
    return Update(old, keep_tr, keep_te, reason, hit=same)


def extract_to_cache(source: FeatureSource, rows: Rows, path: Path, update: Update,
                     images: Callable[[str, np.ndarray, Input], np.ndarray], dtype: str = "float16",
                     batch_size: int = 256, progress: bool = True, shard: str | None = None,
                     notes: dict | None = None) -> Outcome:
    """Compute the rows `update` does not keep, batch by batch, into `path` (atomically, resumably; one writer at a
    time).

    images(split, dataset_rows, source.input) gives the batch a source computes on.
    """
    with exclusive_lock(path.with_name(path.name + ".lock"), str(path)):
        return _extract(source, rows, path, update, images, dtype, batch_size, progress, shard, notes)


def _extract(source: FeatureSource, rows: Rows, path: Path, update: Update,
             images: Callable[[str, np.ndarray, Input], np.ndarray], dtype: str, batch_size: int, progress: bool,
             shard: str | None, notes: dict | None) -> Outcome:
    """Each finished part of PART_ROWS rows is saved atomically as its own file in `<cache>.parts/` (an HDF5 file
    is not safe to reopen after a kill); the cache is assembled from them and renamed into place at the end."""
    import shutil

    from tqdm.auto import tqdm

    t0 = time.time()
    s, d = source.n_spaces, source.feature_dim()
    keep_tr, keep_te = update.keep_train, update.keep_test
    log.info("%s: extracting (%s)", path, update.reason)
    plan = hashlib.sha256(json.dumps([source.recipe, dtype, rows.digest(), keep_tr.tolist(), keep_te.tolist()],
                                     sort_keys=True).encode()).hexdigest()[:16]
    parts_dir = path.with_name(path.name + ".parts")
    if parts_dir.exists() and not (parts_dir / f"plan-{plan}").exists():
        shutil.rmtree(parts_dir)  # parts of another plan (recipe, rows or dtype changed)
    parts_dir.mkdir(parents=True, exist_ok=True)
    (parts_dir / f"plan-{plan}").touch()
    # (file, split, spaces, positions in rows): a training row of a fine-tuned source in the space of the fold model
    # that held it out; a test row in every space at once (what the spaces share is computed once)
    parts = []
    todo_te = np.flatnonzero(keep_te < 0)
    for c, start in enumerate(range(0, len(todo_te), PART_ROWS)):
        parts.append((parts_dir / f"test-{c}.npz", "test", list(range(s)), todo_te[start:start + PART_ROWS]))
    for space in range(s if source.kind == FINETUNED else 1):
        todo = np.flatnonzero(keep_tr < 0)
        if source.kind == FINETUNED:
            todo = todo[rows.train_fold[todo] == space]
        for c, start in enumerate(range(0, len(todo), PART_ROWS)):
            parts.append((parts_dir / f"train-{space}-{c}.npz", "train", [space], todo[start:start + PART_ROWS]))
    done = [p for p in parts if p[0].exists()]
    if done:
        log.info("resuming %s: %d of %d parts already done", path, len(done), len(parts))
    computed = 0
    t_compute = 0.0
    bar = tqdm(total=sum(len(p[3]) for p in parts if not p[0].exists()), desc=source.name, unit="img",
               disable=not progress)
    try:
        for part, split, spaces, chunk in parts:
            if part.exists():
                continue
            bar.set_postfix(split=split)
            index = (rows.train_index if split == "train" else rows.test_index)[chunk]
            feats = np.empty((len(spaces), len(chunk), d), dtype=dtype)
            logits = np.empty((len(spaces), len(chunk)), dtype=np.float32) if source.has_logits else None
            for start in range(0, len(chunk), batch_size):
                batch = images(split, index[start:start + batch_size], source.input)
                t1 = time.time()
                for j, (fb, lb) in enumerate(source.compute_spaces(batch, spaces)):
                    feats[j, start:start + len(fb)] = fb
                    if logits is not None:
                        logits[j, start:start + len(fb)] = lb
                t_compute += time.time() - t1
                bar.update(len(batch))
            computed += len(chunk) * len(spaces)
            with atomic_path(part) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, feats=feats, **({} if logits is None else {"logits": logits}))
        with atomic_path(path) as tmp:
            with fc.writing(tmp) as f:
                _create(f, source, rows, s, d, dtype, plan, shard)
                if update.old is not None:
                    _copy_kept(path, f, keep_tr, keep_te, source.has_logits)
                for part, split, spaces, chunk in parts:
                    with np.load(part) as z:
                        for j, space in enumerate(spaces):
                            _write_rows(f, split, space, chunk, z["feats"][j],
                                        z["logits"][j] if source.has_logits else None)
                f.attrs["notes"] = json.dumps(notes or {})
                f.attrs["complete"] = True
        shutil.rmtree(parts_dir)
    except OSError as exc:
        raise OSError(f"cannot write feature cache {path} ({exc}); the previous cache is untouched; a rerun resumes "
                      f"from the parts already written in {parts_dir}") from exc
    finally:
        bar.close()
        if parts_dir.is_dir() and not any(parts_dir.glob("*.npz")):
            shutil.rmtree(parts_dir, ignore_errors=True)  # nothing to resume from: leave no empty plan behind
    status = "computed" if update.old is None else "appended"
    rate = computed / t_compute if t_compute > 0 else None
    return Outcome(path, status, update.reason, computed, time.time() - t0, rate)


def _write_rows(f, split: str, space: int, rows: np.ndarray, feats: np.ndarray, logits: np.ndarray | None) -> None:
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # rows ascend (flatnonzero): this means contiguous
        rows = slice(int(rows[0]), int(rows[-1]) + 1)  # a hyperslab writes far faster than a point selection
    if split == "train":
        f["train/features"][rows] = feats
        if logits is not None:
            f["train/logits"][rows] = logits
    else:
        f["test/features"][space, rows] = feats
        if logits is not None:
            f["test/logits"][space, rows] = logits


def _create(f, source: FeatureSource, rows: Rows, s: int, d: int, dtype: str, plan: str, shard: str | None) -> None:
    import h5py

    str_dt = h5py.string_dtype("utf-8")
    n, m = len(rows.train_ids), len(rows.test_ids)
    chunk_rows = max(1, min(1024, (1 << 20) // max(1, d * np.dtype(dtype).itemsize)))

    def comp(rows: int, chunks: tuple) -> dict:  # a split without rows (no test images) has nothing to chunk
        return {"chunks": chunks, "compression": "gzip", "compression_opts": 1, "shuffle": True} if rows else {}
    f.create_dataset("train/ids", data=np.array(rows.train_ids, dtype=object), dtype=str_dt)
    f.create_dataset("train/labels", data=rows.train_labels.astype(np.int8))
    f.create_dataset("train/fold", data=rows.train_fold.astype(np.int8))
    f.create_dataset("train/filesize", data=rows.train_size.astype(np.int64))
    f.create_dataset("train/digest", data=rows.train_digest.astype(np.int64))
    f.create_dataset("train/features", shape=(n, d), dtype=dtype, **comp(n, (max(1, min(n, chunk_rows)), d)))
    f.create_dataset("test/ids", data=np.array(rows.test_ids, dtype=object), dtype=str_dt)
    f.create_dataset("test/filesize", data=rows.test_size.astype(np.int64))
    f.create_dataset("test/digest", data=rows.test_digest.astype(np.int64))
    f.create_dataset("test/features", shape=(s, m, d), dtype=dtype, **comp(m, (1, max(1, min(m, chunk_rows)), d)))
    if source.has_logits:
        f.create_dataset("train/logits", shape=(n,), dtype="float32", fillvalue=np.nan)
        f.create_dataset("test/logits", shape=(s, m), dtype="float32", fillvalue=np.nan)
    for k, v in source.recipe.items():
        f.attrs[k] = json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
    f.attrs.update({"format_version": fc.FORMAT_VERSION, "n_spaces": s, "feature_dim": d, "dtype": dtype,
                    "has_logits": source.has_logits, "complete": False, "recipe": json.dumps(source.recipe),
                    "plan": plan, "versions": json.dumps(library_versions()),
                    "shard": shard or ""})


def _copy_kept(old_path: Path, f, keep_tr: np.ndarray, keep_te: np.ndarray, has_logits: bool) -> None:
    with fc.opened(old_path) as old:
        for split, keep in (("train", keep_tr), ("test", keep_te)):
            dst = np.flatnonzero(keep >= 0)
            if not len(dst):
                continue
            src = keep[dst]
            feats = old[f"{split}/features"][()]
            if split == "train":
                f["train/features"][dst] = feats[src]
            else:
                f["test/features"][:, dst] = feats[:, src]
            if has_logits:
                lg = old[f"{split}/logits"][()]
                f[f"{split}/logits"][..., dst] = lg[..., src]


def merge_shards(shards: list[Path], path: Path) -> Path:
    """Join shard files (same recipe, consecutive slices) into one cache, atomically."""
    import h5py

    sets = [fc.load(p) for p in shards]
    recipes = {json.dumps(x.attrs["recipe"], sort_keys=True) for x in sets}
    if len(recipes) != 1:
        raise fc.CacheError(f"shards {', '.join(map(str, shards))} come from different recipes; re-extract them")
    names = sorted(x.attrs["shard"] for x in sets)
    n = int(names[0].split("/")[1])
    if sorted(int(x.split("/")[0]) for x in names) != list(range(n)):
        raise fc.CacheError(f"need all {n} shards to merge, found {names}")
    sets.sort(key=lambda x: int(x.attrs["shard"].split("/")[0]))
    a = sets[0].attrs
    with atomic_path(path) as tmp:
        with fc.writing(tmp) as f:
            with fc.opened(sets[0].path) as first:
                for k, v in first.attrs.items():
                    f.attrs[k] = v
            f.attrs["shard"] = ""
            str_dt = h5py.string_dtype("utf-8")
            cat = np.concatenate
            f.create_dataset("train/ids", data=cat([x.train.ids for x in sets]).astype(object), dtype=str_dt)
            f.create_dataset("test/ids", data=cat([x.test.ids for x in sets]).astype(object), dtype=str_dt)
            f.create_dataset("train/labels", data=cat([x.train.labels for x in sets]).astype(np.int8))
            f.create_dataset("train/fold", data=cat([x.train.fold for x in sets]).astype(np.int8))
            comp = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
            f.create_dataset("train/features", data=cat([x.train.features for x in sets]), **comp)
            f.create_dataset("test/features", data=cat([x.test.features for x in sets], axis=1), **comp)
            sizes = {}
            for x in sets:
                with fc.opened(x.path) as g:
                    for name in ("train/filesize", "test/filesize", "train/digest", "test/digest"):
                        sizes.setdefault(name, []).append(g[name][()])
            for name, parts in sizes.items():
                f.create_dataset(name, data=cat(parts))
            if a["has_logits"]:
                f.create_dataset("train/logits", data=cat([x.train.logits for x in sets]))
                f.create_dataset("test/logits", data=cat([x.test.logits for x in sets], axis=1))
    fc.load(path, with_features=False)
    return path

"""The HDF5 embeddings cache: one file per source, readable with plain h5py.

Layout of ``features/<source>.h5``::

    attrs: source, kind ('finetuned' | 'frozen'), n_spaces, feature_dim, has_logits, complete,
           recipe (JSON: everything that produced the features, extract.sources.spec.source_recipe), and each
           recipe entry on its own: spec, backbone, layer, pooling, img_size, mean, std,
           checkpoint_sha256 (JSON list, one per space), folds_fingerprint, extra; versions, notes (JSON)
    train/ids [N] utf-8, labels [N], fold [N], filesize [N], digest [N] (the image's key: size, content digest),
          features [N, D]   (row i from the fold model that held row i out; frozen: the one model)
          logits [N]        (when has_logits)
    test/ids [M], filesize [M], digest [M], features [S, M, D], logits [S, M]   (S = n_spaces: K or 1)
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import WorkspaceError
from ..sources.base import FROZEN, KINDS

FORMAT_VERSION = 1
SEAL = b"genderfusion cache blake2b "  # the 512-byte user block (which HDF5 skips) holds the digest of the rest
USERBLOCK = 512
_verified: dict[tuple, bool] = {}  # (path, size, mtime, inode) of files checked in this process


class CacheError(WorkspaceError):
    """A cache file that is truncated, incomplete or self-contradictory."""


@dataclass
class SplitFeatures:
    ids: np.ndarray  # str
    features: np.ndarray  # train: [N, D]; test: [S, N, D]
    logits: np.ndarray | None
    labels: np.ndarray | None = None
    fold: np.ndarray | None = None


@dataclass
class FeatureSet:
    """A validated, complete feature cache loaded into memory."""

    path: Path
    attrs: dict
    train: SplitFeatures
    test: SplitFeatures

    @property
    def source(self) -> str:
        return self.attrs["source"]

    @property
    def kind(self) -> str:
        return self.attrs["kind"]


def _decode_ids(ds) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]], dtype=object)


def _digest(path: Path) -> bytes:
    import hashlib

    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        fh.seek(USERBLOCK)
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest().encode()


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """A new cache file open for writing; once closed, its user block is sealed with the digest of the rest, so
    that a damaged block is found before HDF5 reads it (a zeroed block can send HDF5 into an endless loop)."""
    import h5py

    with h5py.File(path, "w", userblock_size=USERBLOCK) as f:
        yield f
    seal(path)


def seal(path: str | os.PathLike) -> None:
    """Write the digest of a cache file (created with its user block) into that block."""
    with open(path, "r+b") as fh:
        fh.write(SEAL + _digest(Path(path)))


def verify(path: Path) -> None:
    """Refuse a sealed cache file whose bytes changed since it was written (checked once per file version and
    process); files written before the seal existed are read unchecked."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _verified:
        return
    with open(path, "rb") as fh:
        head = fh.read(USERBLOCK)
    if head.startswith(SEAL):
        want = head[len(SEAL):len(SEAL) + 64]
        if _digest(path) != want:
            raise CacheError(f"{path}: damaged feature cache (its bytes changed since it was written: checksum "
                             "mismatch); rerun `extract` for this source: it rebuilds the file")
    _verified[key] = True


@contextlib.contextmanager
def opened(path: str | os.PathLike):
    """The cache file open for reading; any failure to open or read it (a truncated file, a damaged block: h5py
    raises OSError, KeyError, ValueError or RuntimeError) is a CacheError naming the file."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path}: no feature cache; extract the source first (cache names: "
                         f"{', '.join(sorted(p.stem for p in path.parent.glob('*.h5'))) or 'none yet'})")
    verify(path)
    try:
        with h5py.File(path, "r") as f:
            yield f
    except CacheError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CacheError(f"{path}: not a readable HDF5 cache (truncated or corrupt: {type(exc).__name__}: {exc}); "
                         "rerun `extract` for this source: it rebuilds the file") from exc


def test_rows(path: str | os.PathLike) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(ids, image keys (file size, content digest)) of a cache's test rows: what its rows were computed from."""
    with opened(path) as f:
        n = len(f["test/ids"])
        digests = f["test/digest"][()].tolist() if "test/digest" in f else [None] * n
        return _decode_ids(f["test/ids"]), list(zip(f["test/filesize"][()].tolist(), digests))


def read_attrs(path: str | os.PathLike) -> dict:
    """Attributes of a cache file, JSON fields decoded; CacheError if it cannot be opened."""
    with opened(path) as f:
        return _attrs(f)


def _attrs(f) -> dict:
    out = {}
    for k, v in f.attrs.items():
        v = v.decode() if isinstance(v, bytes) else v
        if k in ("recipe", "spec", "checkpoint_sha256", "versions", "mean", "std", "extra", "notes"):
            v = json.loads(v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def validate(path: Path, f) -> dict:
    """Check that a cache file is complete and that its attributes agree with its datasets."""
    a = _attrs(f)
    problems = []
    if a.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version {a.get('format_version')} != {FORMAT_VERSION}")
    if not a.get("complete"):
        problems.append("not marked complete (an interrupted extraction?)")
    try:
        n, m = len(f["train/ids"]), len(f["test/ids"])
        s, d = a["n_spaces"], a["feature_dim"]
        shapes = {"train/features": (n, d), "train/labels": (n,), "train/fold": (n,), "test/features": (s, m, d)}
        if a["has_logits"]:
            shapes.update({"train/logits": (n,), "test/logits": (s, m)})
        for name, shape in shapes.items():
            if f[name].shape != shape:
                problems.append(f"{name} has shape {f[name].shape}, attributes imply {shape}")
        if len(a["checkpoint_sha256"]) != s:
            problems.append(f"{len(a['checkpoint_sha256'])} checkpoint sha256 for n_spaces={s}")
        if a["kind"] not in KINDS or (a["kind"] == FROZEN and s != 1):
            problems.append(f"kind {a['kind']!r} with n_spaces={s}")
    except KeyError as exc:
        problems.append(f"missing {exc}")
    if problems:
        raise CacheError(f"{path}: invalid feature cache: " + "; ".join(problems))
    return a


def load(path: str | os.PathLike, with_features: bool = True) -> FeatureSet:
    """Open, validate and read a feature cache (with_features=False: all but the features)."""
    path = Path(path)
    with opened(path) as f:
        a = validate(path, f)

        def read(name):
            return f[name][()] if with_features else None

        logit = (lambda n: f[n][()].astype(np.float32)) if a["has_logits"] else (lambda n: None)
        train = SplitFeatures(_decode_ids(f["train/ids"]), read("train/features"), logit("train/logits"),
                              f["train/labels"][()].astype(np.int64), f["train/fold"][()].astype(np.int64))
        test = SplitFeatures(_decode_ids(f["test/ids"]), read("test/features"), logit("test/logits"))
    return FeatureSet(path, a, train, test)

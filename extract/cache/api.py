"""`extract` as a library call: state the source's recipe, list the rows, and bring its feature cache up to date."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..data.dataset import CompetitionData
from ..data.folds import ensure_folds
from ..data.workspace import Workspace
from ..sources.base import Input
from ..sources.inputs import RowInputs
from ..sources.spec import build_source, source_name, source_recipe, source_spec
from .writer import Outcome, Rows, extract_to_cache, merge_shards, plan_update

log = logging.getLogger(__name__)


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; anything else is a ValueError naming the text."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def dataset_rows(data: CompetitionData, fold: np.ndarray) -> Rows:
    return Rows(list(data.train.ids), data.train.labels, fold, data.train.sizes, list(data.test.ids), data.test.sizes,
                data.train.digests, data.test.digests)


def _resolve(data_dir: str | Path, workdir: str | Path, spec: dict, record: bool = True):
    """The data, the workspace bound to it (recorded now, or by the caller once it succeeded), its folds, and the
    source's recipe."""
    data = CompetitionData.load(data_dir)
    ws = Workspace(workdir)
    ws.bind(data, record)
    folds = ensure_folds(ws, data)
    return data, ws, folds, source_recipe(spec, ws, folds.k, folds.fingerprint)


def prepare_inputs(data_dir: str | Path, backbone: str, workdir: str | Path = "data", skip_bad: bool = False,
                   progress: bool = True, **spec_kw) -> None:
    """Bind the workspace, make its folds and build the image or chip caches a source reads (what the ranks of a
    distributed extraction must not all do at once); spec_kw: source_spec's keyword arguments."""
    data, ws, _, recipe = _resolve(data_dir, workdir, source_spec(backbone, **spec_kw))
    images = RowInputs(ws, data, skip_bad=skip_bad, progress=progress)
    for split in ("train", "test"):
        images.all(split, Input.of(recipe))


def extract_features(data_dir: str | Path, backbone: str, workdir: str | Path = "data", frozen: bool = False,
                     pool: str | None = None, img_size: int | None = None, weights: str | None = None,
                     pretrained: bool = False, batch_size: int = 256, device: str = "auto", dtype: str = "float16",
                     force: bool = False, shard: str | None = None, skip_bad: bool = False,
                     progress: bool = True, align: bool | None = None, layer: str | None = None,
                     tta: str | None = None) -> Outcome:
    """Write (or reuse) `workdir/features/<source>.h5` for every train and test image.

    A cache with the same recipe and rows is a hit decided without building the source (no model, no torch).
    """
    t0 = time.time()
    data, ws, folds, recipe = _resolve(data_dir, workdir, source_spec(backbone, frozen, pool, img_size, weights,
                                                                      pretrained, align, layer, tta), record=False)
    rows = dataset_rows(data, folds.for_ids(data.train.ids).copy())
    images = RowInputs(ws, data, skip_bad=skip_bad, progress=progress)
    skipped: list[str] = []
    if skip_bad:
        inp = Input.of(recipe)
        for split in ("train", "test"):
            images.all(split, inp)  # decodes once and finds the corrupt images
            bad = sorted(images.bad[split])
            skipped += [getattr(data, split).ids[i] for i in bad]
            if split == "train":
                rows.train_fold[bad] = -1  # excluded from every head
    path = ws.features_path(recipe["source"])
    if shard:
        i, n = parse_shard(shard)
        rows = rows.shard(i, n)
        path = ws.shard_path(recipe["source"], i, n)
    update = plan_update(path, recipe, rows, dtype, force)
    if update.hit:
        ws.bind(data)
        return Outcome(path, "hit", update.reason, 0, time.time() - t0, None)
    source = build_source(recipe, ws, batch_size, device)
    notes: dict = {"skipped_ids": skipped}
    if source.input.padding is not None:  # aligned chips: made once for every split, their fallbacks counted
        for split in ("train", "test"):
            images.all(split, source.input)
        notes["alignment_fallbacks"] = sum(images.fallbacks[split, source.input] for split in ("train", "test"))
    out = extract_to_cache(source, rows, path, update, images, dtype=dtype, batch_size=batch_size,
                           progress=progress, shard=shard, notes=notes)
    ws.bind(data)  # the workspace names this data folder once its cache is written
    return out


def merge_features(workdir: str | Path, backbone: str, frozen: bool = False, align: bool | None = None,
                   layer: str | None = None, tta: str | None = None) -> Path:
    """Join `features/<source>.shard*of*.h5` into `features/<source>.h5`."""
    ws = Workspace(workdir)
    name = source_name(source_spec(backbone, frozen, align=align, layer=layer, tta=tta))
    shards = ws.shard_paths(name)
    if not shards:
        raise FileNotFoundError(f"no shards {name}.shard*of*.h5 in {ws.features_path(name).parent}")
    return merge_shards(shards, ws.features_path(name))

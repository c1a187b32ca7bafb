"""`extract` as a library call: pick the source, list the rows, and bring its feature cache up to date."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .dataset import CompetitionData
from .extraction import Outcome, Rows, extract_to_cache, merge_shards
from .folds import ensure_folds
from .image_cache import cached_images
from .face_sources import FACE_NETS, FaceNetSource, face_source_name
from .sources import FeatureSource, finetuned_source, frozen_source, source_name
from .workspace import Workspace

log = logging.getLogger(__name__)


def dataset_rows(data: CompetitionData, fold: np.ndarray) -> Rows:
    def sizes(paths):
        return np.array([p.stat().st_size for p in paths], dtype=np.int64)

    return Rows(list(data.train.ids), data.train.labels, fold, sizes(data.train.paths),
                list(data.test.ids), sizes(data.test.paths))


def make_source(name: str, ws: Workspace, data: CompetitionData, k: int, folds_fp: str, frozen: bool, pool: str,
                img_size: int | None, weights: str | None, pretrained: bool, batch_size: int, device: str,
                skip_bad: bool, progress: bool, align: bool = True, layer: str = "layer_3_relu") -> FeatureSource:
    """A face network, a fine-tuned source from the workspace's fold checkpoints, or a frozen backbone."""
    if name in FACE_NETS:
        return FaceNetSource(name, {"train": data.train.paths, "test": data.test.paths}, align=align, layer=layer)

    def images(split: str, size: int) -> np.ndarray:
        return cached_images(ws, data, split, size, skip_bad=skip_bad, progress=progress)[0]

    if frozen:
        return frozen_source(name, img_size or 224, pool, images, weights=weights, pretrained=pretrained,
                             batch_size=batch_size, device=device)
    return finetuned_source(ws.model_dir(name), name, k, folds_fp, pool, images, batch_size, device)


def extract_features(data_dir: str | Path, backbone: str, workdir: str | Path = "data", frozen: bool = False,
                     pool: str = "flatten", img_size: int | None = None, weights: str | None = None,
                     pretrained: bool = False, batch_size: int = 256, device: str = "auto", dtype: str = "float16",
                     force: bool = False, shard: str | None = None, skip_bad: bool = False,
                     progress: bool = True, align: bool = True, layer: str = "layer_3_relu") -> Outcome:
    """Write (or reuse) `workdir/features/<source>.h5` for every train and test image."""
    data = CompetitionData.load(data_dir)
    ws = Workspace(workdir)
    ws.bind(data)
    folds = ensure_folds(ws, data)
    source = make_source(backbone, ws, data, folds.k, folds.fingerprint, frozen, pool, img_size, weights, pretrained,
                         batch_size, device, skip_bad, progress, align, layer)
    rows = dataset_rows(data, folds.for_ids(data.train.ids).copy())
    skipped: list[str] = []
    if skip_bad:
        size = source.attrs()["img_size"]
        for split in ("train", "test"):
            bad = cached_images(ws, data, split, size, skip_bad=True, progress=progress)[1]
            skipped += [getattr(data, split).ids[i] for i in bad]
            if split == "train":
                rows.train_fold[bad] = -1  # excluded from every head
    path = ws.features_path(source.name)
    if shard:
        i, n = (int(v) for v in shard.split("/"))
        if not 0 <= i < n:
            raise ValueError(f"--shard {shard}: expected i/n with 0 <= i < n")
        rows = rows.shard(i, n)
        path = path.with_name(f"{path.stem}.shard{i}of{n}.h5")
    return extract_to_cache(source, rows, path, dtype=dtype, force=force, progress=progress, shard=shard,
                            notes={"skipped_ids": skipped})


def merge_features(workdir: str | Path, backbone: str, frozen: bool = False, align: bool = True,
                   layer: str = "layer_3_relu") -> Path:
    """Join `features/<source>.shard*of*.h5` into `features/<source>.h5`."""
    name = face_source_name(backbone, align, layer) if backbone in FACE_NETS else source_name(backbone, frozen)
    path = Workspace(workdir).features_path(name)
    shards = sorted(path.parent.glob(f"{path.stem}.shard*of*.h5"))
    if not shards:
        raise FileNotFoundError(f"no shards {path.stem}.shard*of*.h5 in {path.parent}")
    return merge_shards(shards, path)

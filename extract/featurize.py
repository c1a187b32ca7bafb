"""`extract` as a library call: pick the source, list the rows, and bring its feature cache up to date."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import sha256_file
from .checkpoints import fold_checkpoints
from .dataset import CompetitionData
from .extraction import Outcome, Rows, extract_to_cache, merge_shards, quick_hit
from .face_sources import FACE_NETS, FaceNetSource, face_model_files, face_source_name
from .folds import ensure_folds
from .image_cache import cached_images
from .source_base import HUB_WEIGHTS, RANDOM_INIT, FeatureSource, source_name
from .workspace import Workspace

log = logging.getLogger(__name__)


def dataset_rows(data: CompetitionData, fold: np.ndarray) -> Rows:
    return Rows(list(data.train.ids), data.train.labels, fold, data.train.sizes, list(data.test.ids), data.test.sizes)


def source_spec(backbone: str, frozen: bool = False, pool: str = "flatten", img_size: int | None = None,
                weights: str | None = None, pretrained: bool = False, align: bool = True,
                layer: str = "layer_3_relu") -> dict:
    """Everything needed to rebuild a source later (recorded in its cache and in fusion artifacts)."""
    if backbone in FACE_NETS:
        return {"type": "face", "net": backbone, "align": align, "layer": layer}
    if frozen:
        return {"type": "frozen", "backbone": backbone, "img_size": img_size or 224, "pool": pool,
                "weights": str(Path(weights).resolve()) if weights and weights != "random" else weights,
                "pretrained": pretrained}
    return {"type": "finetuned", "backbone": backbone, "pool": pool}


def build_source(spec: dict, ws: Workspace, k: int, folds_fp: str | None, images: Callable[[str, int], np.ndarray],
                 items: dict[str, list], batch_size: int = 256, device: str = "auto") -> FeatureSource:
    """A face network, a frozen backbone, or the K fold checkpoints of a fine-tuned one.

    images(split, size) gives resized uint8 images for torch sources; items[split] gives the paths or
    full-resolution arrays that face networks align themselves.
    """
    from .sources import finetuned_source, frozen_source  # torch: only when a source is built

    if spec["type"] == "face":
        source: FeatureSource = FaceNetSource(spec["net"], items, align=spec["align"], layer=spec["layer"])
    elif spec["type"] == "frozen":
        source = frozen_source(spec["backbone"], spec["img_size"], spec["pool"], images, weights=spec["weights"],
                               pretrained=spec["pretrained"], batch_size=batch_size, device=device)
    else:
        source = finetuned_source(ws.model_dir(spec["backbone"]), spec["backbone"], k, folds_fp, spec["pool"],
                                  images, batch_size, device)
    source.spec = spec
    return source


def cache_name(backbone: str, frozen: bool = False, align: bool = True, layer: str = "layer_3_relu") -> str:
    """The name of a source's feature cache (features/<name>.h5)."""
    return face_source_name(backbone, align, layer) if backbone in FACE_NETS else source_name(backbone, frozen)


def known_recipe(spec: dict, ws: Workspace, k: int, folds_fp: str | None) -> dict | None:
    """The recipe entries of a source that can be computed without torch, or None when only the model can tell."""
    if spec["type"] == "face":
        files = face_model_files(spec["net"])
        return {"spec": spec, "checkpoint_sha256": [files["model"][1]],
                "shape_predictor_sha256": files["shape_predictor"][1]}
    if spec["type"] == "finetuned":
        metas = fold_checkpoints(ws.model_dir(spec["backbone"]), spec["backbone"], k, folds_fp)
        return {"spec": spec, "checkpoint_sha256": [m["sha256"] for m in metas], "folds_fingerprint": folds_fp}
    if spec["pretrained"]:
        sha = HUB_WEIGHTS
    elif spec["weights"] == "random":
        sha = RANDOM_INIT
    elif spec["weights"] and Path(spec["weights"]).is_file():
        sha = sha256_file(spec["weights"])
    else:
        return None  # a backbone's built-in default weights are known only to its registry entry
    return {"spec": spec, "checkpoint_sha256": [sha]}


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
    spec = source_spec(backbone, frozen, pool, img_size, weights, pretrained, align, layer)

    rows = dataset_rows(data, folds.for_ids(data.train.ids).copy())
    if not (force or shard or skip_bad):
        known = known_recipe(spec, ws, folds.k, folds.fingerprint)
        path = ws.features_path(cache_name(backbone, frozen, align, layer))
        hit = quick_hit(path, known, rows, dtype) if known else None
        if hit:
            return hit

    def images(split: str, size: int) -> np.ndarray:
        return cached_images(ws, data, split, size, skip_bad=skip_bad, progress=progress)[0]

    source = build_source(spec, ws, folds.k, folds.fingerprint, images,
                          {"train": data.train.paths, "test": data.test.paths}, batch_size, device)
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
    path = Workspace(workdir).features_path(cache_name(backbone, frozen, align, layer))
    shards = sorted(path.parent.glob(f"{path.stem}.shard*of*.h5"))
    if not shards:
        raise FileNotFoundError(f"no shards {path.stem}.shard*of*.h5 in {path.parent}")
    return merge_shards(shards, path)

"""`train-backbone` as a library call: data, workspace, folds, image cache, then every requested fold."""
from __future__ import annotations

import logging
from pathlib import Path

from .atomic import read_json, write_json
from .backbones import _spec
from .dataset import CompetitionData
from .folds import ensure_folds
from .image_cache import cached_images
from .train import TrainConfig, train_fold
from .workspace import Workspace

log = logging.getLogger(__name__)


def train_backbone(data_dir: str | Path, cfg: TrainConfig, workdir: str | Path = "data", k: int | None = None,
                   fold: int | None = None, fold_seed: int | None = None, new_folds: bool = False,
                   skip_bad: bool = False, device: str = "auto", progress: bool = True) -> dict:
    """Fine-tune cfg.backbone on every fold (or one) of the workspace's shared K-fold split.

    Returns a summary with per-fold results and, once all folds are done, the out-of-fold accuracy.
    """
    _spec(cfg.backbone)  # unknown names fail before any work
    data = CompetitionData.load(data_dir)
    ws = Workspace(workdir)
    dataset_fp = ws.bind(data)
    folds = ensure_folds(ws, data, k, fold_seed, new=new_folds)
    images, bad = cached_images(ws, data, "train", cfg.img_size, skip_bad=skip_bad, progress=progress)
    fold_of = folds.for_ids(data.train.ids).copy()
    fold_of[bad] = -1  # corrupt images: never trained on, never predicted
    todo = range(folds.k) if fold is None else [fold]
    if fold is not None and not 0 <= fold < folds.k:
        raise ValueError(f"--fold {fold} is outside 0..{folds.k - 1}")
    provenance = {"dataset_fingerprint": dataset_fp, "folds_fingerprint": folds.fingerprint, "k": folds.k}
    model_dir = ws.model_dir(cfg.backbone)
    for f in todo:
        train_fold(model_dir, images, data.train.labels, data.train.ids, fold_of, f, cfg,
                   provenance, device=device, progress=progress)
    results = {f: read_json(model_dir / f"fold{f}.json") for f in range(folds.k)
               if (model_dir / f"fold{f}.json").exists()}
    summary = {"backbone": cfg.backbone, "k": folds.k, "folds": results,
               "skipped_images": [data.train.ids[i] for i in bad]}
    if len(results) == folds.k:
        summary["oof_accuracy"] = (sum(r["oof_accuracy"] * r["n_holdout"] for r in results.values())
                                   / sum(r["n_holdout"] for r in results.values()))
        write_json(model_dir / "summary.json", summary)
    return summary

"""`extract` and `train-backbone` under torchrun: the ranks share the rows (each extracts its shard, rank 0 merges
them into the one cache) or the folds (fold f on rank f mod N, one process per fold model).

Rank 0 first builds what every rank reads (folds, image, chip or trunk caches); a barrier follows. torch.distributed
runs on gloo on the CPU and NCCL with CUDA; each rank uses the GPU of its LOCAL_RANK.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import DataError


def world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun with more than one process, else None."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    return int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: str, local_rank: int) -> str:
    """The device of one rank: with CUDA, the GPU of its local rank."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return "cpu" if device == "auto" else device


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def agree(value: str, what: str) -> None:
    """Stop every rank with the same message when the ranks see different values."""
    import torch.distributed as dist

    values: list = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise DataError(f"the torchrun ranks disagree on {what} ("
                        + ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
                        + "); every rank must read the same data folder")


def _dataset_fingerprint(data_dir: str | Path) -> str:
    from .data.dataset import CompetitionData

    return CompetitionData.load(data_dir).fingerprint(labels=True, content=True)


def extract_ranks(data_dir: str | Path, backbone: str, workdir: str | Path = "data", device: str = "auto",
                  skip_bad: bool = False, progress: bool = True, **kw):
    """Each rank extracts its shard of the rows; rank 0 then merges them into features/<source>.h5.

    Returns (this rank's Outcome, the merged cache path on rank 0 else None). A killed rank's shard resumes from its
    parts on the next run; kw: extract_features' source options."""
    import torch.distributed as dist

    from .cache.api import extract_features, merge_features, prepare_inputs

    rank, size, local = world()
    device = rank_device(device, local)
    spec_kw = {k: kw[k] for k in ("frozen", "pool", "img_size", "weights", "pretrained", "align", "layer", "tta")
               if k in kw}
    with process_group(device):
        agree(_dataset_fingerprint(data_dir), "the dataset fingerprint")
        if rank == 0:
            prepare_inputs(data_dir, backbone, workdir, skip_bad=skip_bad, progress=progress, **spec_kw)
        dist.barrier()
        out = extract_features(data_dir, backbone, workdir, device=device, skip_bad=skip_bad, progress=progress,
                               shard=f"{rank}/{size}", **kw)
        dist.barrier()
        merged = None
        if rank == 0:
            merged = merge_features(workdir, backbone, **{k: spec_kw[k] for k in ("frozen", "align", "layer", "tta")
                                                          if k in spec_kw})
        dist.barrier()
    return out, merged


def train_ranks(data_dir: str | Path, cfg, workdir: str | Path = "data", k: int | None = None,
                fold_seed: int | None = None, new_folds: bool = False, skip_bad: bool = False, device: str = "auto",
                progress: bool = True, exclude: str | Path | None = None,
                group_duplicates: bool = True) -> dict | None:
    """Fold f is trained on rank f mod N; rank 0 returns the summary of every fold (None on the other ranks).
    Checkpoints are the same files as a single process writes."""
    import torch.distributed as dist

    from .models.training import prepare_training, train_backbone

    rank, size, local = world()
    device = rank_device(device, local)
    with process_group(device):
        agree(_dataset_fingerprint(data_dir), "the dataset fingerprint")
        if rank == 0:
            folds = prepare_training(data_dir, cfg, workdir, k, fold_seed, new_folds, skip_bad, device, progress,
                                     group_duplicates)[3]
            n = [folds.k]
        else:
            n = [None]
        dist.barrier()
        dist.broadcast_object_list(n, src=0)
        for f in range(rank, n[0], size):
            train_backbone(data_dir, cfg, workdir, fold=f, skip_bad=skip_bad, device=device, progress=progress,
                           exclude=exclude)
        dist.barrier()
        summary = train_backbone(data_dir, cfg, workdir, skip_bad=skip_bad, device=device, progress=False,
                                 exclude=exclude) if rank == 0 else None
        dist.barrier()
    return summary

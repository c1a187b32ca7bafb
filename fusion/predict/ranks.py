"""`predict --images` under torchrun: each rank predicts one contiguous shard of the photos into a part file, and
rank 0 merges the parts into the one output, in input order (the same rows one process writes)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable

from genderfusion.files.atomic import atomic_path
from genderfusion.extract.distributed import agree, process_group, rank_device, world

from genderfusion.fusion.predict.options import PhotoOptions
from genderfusion.fusion.predict.table import COUNTS, TABLE_ROWS, PhotoJob, predict_images


def _part(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.name}.part{rank}{out.suffix}")


def _merge(parts: list[Path], out: Path) -> None:
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.concat_tables([pq.read_table(p) for p in parts]), tmp)
            return
        with open(tmp, "wb") as dst:
            for k, part in enumerate(parts):
                with open(part, "rb") as src:
                    header = src.readline()
                    if k == 0:
                        dst.write(header)
                    shutil.copyfileobj(src, dst)


def predict_images_ranks(clf_of: Callable[[], object], job: PhotoJob, options: PhotoOptions,
                         progress: bool = True) -> dict | None:
    """clf_of(): the model, loaded on each rank. Every rank gets the same job (one plan of drawn names, checked
    before any rank writes). Returns, on rank 0, the summary of every rank's rows; None on the others."""
    import torch.distributed as dist

    rank, size, local = world()
    options = dataclasses.replace(options, device=rank_device(options.device, local))
    paths = job.paths
    with process_group(options.device):
        agree(f"{len(paths)} photos, first {paths[0] if paths else None}, last {paths[-1] if paths else None}",
              "the photos to predict")
        lo, hi = rank * len(paths) // size, (rank + 1) * len(paths) // size
        mine = predict_images(clf_of(), job.shard(lo, hi, _part(job.out, rank)), options, progress) if hi > lo else {}
        summaries: list = [None] * size
        dist.all_gather_object(summaries, mine)
        if rank != 0:
            return None
        parts = [_part(job.out, r) for r, s in enumerate(summaries) if s]
        _merge(parts, job.out)
        for p in parts:
            p.unlink()
    done = [s for s in summaries if s]
    total = {k: sum(s[k] for s in done) for k in COUNTS}
    seconds = max(s["seconds"] for s in done)
    kept = [s["rows"] for s in done]  # each rank's rows, when it had few
    rows = None if any(k is None for k in kept) else [r for k in kept for r in k]
    return {**done[0], **total, "out": str(job.out), "ranks": size, "seconds": seconds,
            "img_per_s": round(total["images"] / seconds, 1) if seconds > 0 else None,
            "rows": rows if rows is not None and len(rows) <= TABLE_ROWS else None}

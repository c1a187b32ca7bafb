"""Face descriptor speed: dlib's own path against the torch path on the same faces, and FusionClassifier.predict.

Both descriptor paths run end to end from image files, in the same layout: one single-threaded process per core
does decode, dlib's 5-point landmarks and 150 px chip, then the descriptor - dlib's `compute_face_descriptor` (how
the project ran it before) or the project's dlib-face network (`FaceNet`: the ResNet read from the same .dat, in
torch, batches of 64). Only the descriptor differs. With CUDA, the torch network runs in this process on the GPU
while the workers make the chips.

    python bench/face_speed.py --data ../shared/data/faces --n 2048 --model data/bench-cpu/heads/best/model.safetensors
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `bench`; genderfusion comes from the install

from bench._report import emit  # noqa: E402
from bench.predict_speed import measure, test_paths  # noqa: E402

from genderfusion.extract.faces.face_files import DLIB_NET, SHAPE_PREDICTOR, dlib_model_paths  # noqa: E402
from genderfusion.extract.faces.face_nets import FaceNet, align_files, face_net_config  # noqa: E402
from genderfusion.extract.models.inference import resolve_device  # noqa: E402
from genderfusion.extract.workers import worker_pool  # noqa: E402

CHUNK = 64


def _jobs(paths: list[str]) -> list[tuple[list[str], str, int, float]]:
    """Chunks of files for align_files, with dlib-face's chip size and padding."""
    cfg = face_net_config("dlib-face")
    sp = str(dlib_model_paths()[SHAPE_PREDICTOR])
    return [(paths[i:i + CHUNK], sp, cfg.chip, cfg.padding) for i in range(0, len(paths), CHUNK)]


@lru_cache(maxsize=1)
def _dlib_net():
    import dlib

    return dlib.face_recognition_model_v1(str(dlib_model_paths()[DLIB_NET]))


def _dlib_chunk(job: tuple[list[str], str, int, float]) -> np.ndarray:
    """dlib's own path for a chunk of files, in a worker process."""
    chips, _, bad = align_files(job)
    assert not bad, bad
    desc = _dlib_net().compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
    return np.array([np.array(d) for d in desc], dtype=np.float32)


@lru_cache(maxsize=1)
def _torch_net() -> FaceNet:
    import torch

    torch.set_num_threads(1)  # one process per core
    return FaceNet(face_net_config("dlib-face"), "cpu")


def _torch_chunk(job: tuple[list[str], str, int, float]) -> np.ndarray:
    """The torch path for a chunk of files, in a worker process."""
    chips, _, bad = align_files(job)
    assert not bad, bad
    return _torch_net().run(chips)[0]


def per_core(chunk_fn, paths: list[str], workers: int) -> tuple[np.ndarray, float]:
    """Descriptors of the files by chunk_fn in one process per core (start-up and model loading timed), and img/s."""
    t = time.perf_counter()
    with worker_pool(workers) as pool:
        out = np.concatenate(list(pool.map(chunk_fn, _jobs(paths))))
    return out, len(paths) / (time.perf_counter() - t)


def gpu_path(paths: list[str], workers: int, device: str) -> tuple[np.ndarray, float]:
    """The torch network in this process on the GPU while the workers make the chips."""
    t = time.perf_counter()
    net = FaceNet(face_net_config("dlib-face"), device)
    out = []
    with worker_pool(workers) as pool:
        for chips, _, bad in pool.map(align_files, _jobs(paths)):
            assert not bad, bad
            out.append(net.run(chips)[0])
    return np.concatenate(out), len(paths) / (time.perf_counter() - t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--n", type=int, default=2048, help="training faces for the descriptor paths")
    p.add_argument("--model", default=None,
                   help="a fusion model file (model.safetensors or .gfm) for the predict measurement")
    p.add_argument("--predict-n", type=int, default=1024, help="test image paths for FusionClassifier.predict")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    data = Path(args.data)
    workers = len(os.sched_getaffinity(0))
    ids = [r["id"] for r in csv.DictReader(open(data / "train.csv"))][: args.n]
    paths = [str(data / "train" / f"{i}.jpg") for i in ids]
    ref, dlib_rate = per_core(_dlib_chunk, paths, workers)
    device = resolve_device(args.device)
    ours, torch_rate = (gpu_path(paths, workers, device) if device.type == "cuda"
                        else per_core(_torch_chunk, paths, workers))
    out = {"images": len(paths), "cores": workers, "torch_device": device.type,
           "face_speed": {"dlib_img_per_s": round(dlib_rate, 1), "torch_img_per_s": round(torch_rate, 1),
                          "ratio": round(torch_rate / dlib_rate, 2),
                          "max_abs_descriptor_difference": float(np.abs(ref - ours).max())}}
    if args.model:
        out["predict"] = measure(args.model, test_paths(data, args.predict_n))
    return emit(out, args.json)


if __name__ == "__main__":
    main()

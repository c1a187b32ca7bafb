"""Face descriptor speed: dlib's own path against the torch path on the same faces, and FusionClassifier.predict.

Both descriptor paths run end to end from image files on all cores: decode, dlib's 5-point landmarks and
150 px chip, then the descriptor - dlib's `compute_face_descriptor` in one single-threaded process per core (how
the project ran it before), or the ResNet read from the same .dat in torch (chips made in one process per core,
the network batched in-process on every core).

    python bench/face_speed.py --data ../shared/data/faces --n 2048 --model data/bench-cpu/heads/best/model.pkl
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `bench`; genderfusion comes from the install

from bench._report import emit  # noqa: E402
from bench.predict_speed import measure, test_paths  # noqa: E402

from genderfusion.extract.models.face_nets import align_files, dlib_model_paths  # noqa: E402

NET, SP = "dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"
CHUNK = 64


def _dlib_chunk(paths: list[str]) -> np.ndarray:
    """dlib's own path for a chunk of files, in a worker process."""
    import dlib

    files = dlib_model_paths()
    chips, _, bad = align_files((paths, str(files[SP]), 150, 0.25))
    assert not bad, bad
    global _NET
    if "_NET" not in globals():
        _NET = dlib.face_recognition_model_v1(str(files[NET]))
    desc = _NET.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
    return np.array([np.array(d) for d in desc], dtype=np.float32)


def dlib_path(paths: list[str], workers: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=os.environ.__setitem__, initargs=("OMP_NUM_THREADS", "1")) as pool:
        out = np.concatenate(list(pool.map(_dlib_chunk, [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)])))
    return out, len(paths) / (time.perf_counter() - t)


def torch_path(paths: list[str], workers: int, device: str) -> tuple[np.ndarray, float]:
    import torch

    from genderfusion.extract.models.dlib_resnet import load_dlib_resnet
    from genderfusion.extract.models.inference import resolve_device

    t = time.perf_counter()
    dev = resolve_device(device)
    net = load_dlib_resnet(dlib_model_paths()[NET]).to(dev)
    jobs = [(paths[i:i + CHUNK], str(dlib_model_paths()[SP]), 150, 0.25) for i in range(0, len(paths), CHUNK)]
    out = []
    with ProcessPoolExecutor(workers) as pool, torch.inference_mode():
        for chips, _, bad in pool.map(align_files, jobs):  # the network runs while the next chips are made
            assert not bad, bad
            out.append(net(net.normalize(torch.from_numpy(chips).to(dev))).float().cpu().numpy())
    return np.concatenate(out), len(paths) / (time.perf_counter() - t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--n", type=int, default=2048, help="training faces for the descriptor paths")
    p.add_argument("--model", default=None, help="a fusion model.pkl for the predict measurement")
    p.add_argument("--predict-n", type=int, default=1024, help="test image paths for FusionClassifier.predict")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    data = Path(args.data)
    workers = len(os.sched_getaffinity(0))
    ids = [r["id"] for r in csv.DictReader(open(data / "train.csv"))][: args.n]
    paths = [str(data / "train" / f"{i}.jpg") for i in ids]
    ref, dlib_rate = dlib_path(paths, workers)
    ours, torch_rate = torch_path(paths, workers, args.device)
    out = {"images": len(paths), "cores": workers,
           "face_speed": {"dlib_img_per_s": round(dlib_rate, 1), "torch_img_per_s": round(torch_rate, 1),
                          "ratio": round(torch_rate / dlib_rate, 2),
                          "max_abs_descriptor_difference": float(np.abs(ref - ours).max())}}
    if args.model:
        out["predict"] = measure(args.model, test_paths(data, args.predict_n))
    return emit(out, args.json)


if __name__ == "__main__":
    main()

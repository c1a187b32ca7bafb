"""Throughput of `extract` against the raw forward of the same model, in one run on the same machine.

    python bench/extract_speed.py --data ../shared/data/faces --backbone cnn-deep --img-size 64 --n 4096

Both sides use the same model (a frozen, seeded initialisation of the backbone: speed does not depend on
the weights), the same batch size and the same pooling. The raw forward runs `forward_features` + head on
normalised float tensors already in memory; `extract` starts from the workspace's decoded-image cache and
ends with features written to HDF5.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `bench`; genderfusion comes from the install

from bench._report import emit  # noqa: E402

from genderfusion.extract.cache.api import extract_features  # noqa: E402
from genderfusion.extract.data.workspace import Workspace  # noqa: E402
from genderfusion.extract.models.augment import normalize, to_float  # noqa: E402
from genderfusion.extract.models.inference import pool_features, resolve_device, step_size  # noqa: E402
from genderfusion.extract.sources.spec import build_source, source_recipe, source_spec  # noqa: E402


def subset(data: Path, out: Path, n: int) -> Path:
    """A competition folder with the first n training images and one test image (linked)."""
    (out / "train").mkdir(parents=True)
    (out / "test").mkdir()
    rows = list(csv.DictReader(open(data / "train.csv")))[:n]
    with open(out / "train.csv", "w") as fh:
        fh.write("id,label\n" + "".join(f"{r['id']},{r['label']}\n" for r in rows))
    first_test = next(csv.DictReader(open(data / "test.csv")))["id"]
    (out / "test.csv").write_text(f"id\n{first_test}\n")
    os.symlink((data / "test" / f"{first_test}.jpg").resolve(), out / "test" / f"{first_test}.jpg")
    for r in rows:
        os.symlink((data / "train" / f"{r['id']}.jpg").resolve(), out / "train" / f"{r['id']}.jpg")
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--backbone", default="cnn-deep")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--pool", default="flatten")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(Path(args.data), Path(tmp) / "comp", args.n)
        ws = Path(tmp) / "ws"
        extract_features(data, args.backbone, ws, frozen=True, img_size=args.img_size, pool=args.pool,
                         batch_size=args.batch_size, device=args.device, progress=False)  # warm-up, decodes once
        images = np.load(ws / "cache" / "images" / f"train_{args.img_size}.npy")
        spec = source_spec(args.backbone, frozen=True, pool=args.pool, img_size=args.img_size)
        src = build_source(source_recipe(spec, Workspace(ws), 1, None), Workspace(ws), device=args.device)
        model = src.model(0).eval()  # channels-last, as extraction runs it
        x = normalize(to_float(torch.from_numpy(images)), model.preprocess.mean, model.preprocess.std).to(dev)
        x = x.contiguous(memory_format=torch.channels_last)
        step = step_size(args.batch_size, dev)  # the forward batch extraction uses on this device

        def raw() -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(x), step):
                    fmap = model.forward_features(x[i:i + step])
                    model.forward_head(fmap)
                    pool_features(fmap, args.pool).cpu()
            return len(x) / (time.perf_counter() - t)

        def ext() -> float:
            t = time.perf_counter()
            out = extract_features(data, args.backbone, ws, frozen=True, img_size=args.img_size, pool=args.pool,
                                   batch_size=args.batch_size, device=args.device, force=True, progress=False)
            assert out.computed_rows == args.n + 1
            return out.computed_rows / (time.perf_counter() - t)

        raw_rates, ext_rates = [], []
        for _ in range(args.repeats):  # interleaved, so that machine noise hits both alike
            raw_rates.append(raw())
            ext_rates.append(ext())
    result = {"backbone": args.backbone, "img_size": args.img_size, "pool": args.pool, "n": args.n,
              "batch_size": args.batch_size, "device": str(dev), "threads": torch.get_num_threads(),
              "raw_forward_img_per_s": round(float(np.median(raw_rates)), 1),
              "extract_img_per_s": round(float(np.median(ext_rates)), 1)}
    result["extract_vs_raw_forward"] = round(result["extract_img_per_s"] / result["raw_forward_img_per_s"], 3)
    return emit(result, args.json)


if __name__ == "__main__":
    main()

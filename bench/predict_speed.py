"""FusionClassifier.predict throughput on image paths: first call (loads and verifies every model) and warm calls.

    python bench/predict_speed.py --model data/heads/fusion/model.pkl --data ../shared/data/faces --n 256
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import emit  # noqa: E402

from genderfusion.fusion.classifier import FusionClassifier  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ids = [r["id"] for r in csv.DictReader(open(Path(args.data) / "test.csv"))][: args.n]
    paths = [Path(args.data) / "test" / f"{i}.jpg" for i in ids]
    clf = FusionClassifier.load(args.model)
    t = time.perf_counter()
    first = clf.predict(paths)
    cold = len(paths) / (time.perf_counter() - t)
    t = time.perf_counter()
    again = clf.predict(paths)
    warm = len(paths) / (time.perf_counter() - t)
    assert (first == again).all()
    out = {"model": args.model, "images": len(paths), "sources": clf.source_names_,
           "first_call_img_per_s": round(cold, 1), "warm_img_per_s": round(warm, 1)}
    return emit(out, args.json)


if __name__ == "__main__":
    main()

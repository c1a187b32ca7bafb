"""FusionClassifier.predict throughput on image paths: first call (loads and verifies every model) and warm calls.

    python bench/predict_speed.py --model data/heads/fusion/model.pkl --data ../shared/data/faces --n 1024
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `bench`; genderfusion comes from the install

from bench._report import emit  # noqa: E402


def measure(model: str, paths: list[Path]) -> dict:
    """Images/s of predict_proba on `paths`: the first call of a loaded model, then a warm call."""
    from genderfusion import FusionClassifier

    clf = FusionClassifier.load(model)
    t = time.perf_counter()
    first = clf.predict_proba(paths)
    cold = len(paths) / (time.perf_counter() - t)
    t = time.perf_counter()
    again = clf.predict_proba(paths)
    warm = len(paths) / (time.perf_counter() - t)
    assert np.array_equal(first, again)
    return {"model": str(model), "images": len(paths), "sources": clf.source_names_,
            "first_call_img_per_s": round(cold, 1), "warm_img_per_s": round(warm, 1)}


def test_paths(data: Path, n: int) -> list[Path]:
    return [data / "test" / f"{r['id']}.jpg" for r in list(csv.DictReader(open(data / "test.csv")))[:n]]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    return emit(measure(args.model, test_paths(Path(args.data), args.n)), args.json)


if __name__ == "__main__":
    main()

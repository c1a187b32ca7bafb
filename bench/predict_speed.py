"""FusionClassifier.predict throughput on image paths: first call (loads and verifies every model) and warm calls.

    python bench/predict_speed.py --model data/heads/fusion/model.safetensors --data ../shared/data/faces --n 1024
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
    """Images/s of predict_proba on `paths`: the first call of a loaded model, then a warm call (with its cascade,
    when it has one; then warm calls with and without it), then a warm call timed step by step (milliseconds an
    image: decoding, each input view, each source's networks, the heads)."""
    from genderfusion import FusionClassifier

    clf = FusionClassifier.load(model)
    t = time.perf_counter()
    first = clf.predict_proba(paths)
    cold = len(paths) / (time.perf_counter() - t)
    t = time.perf_counter()
    again = clf.predict_proba(paths)
    warm = len(paths) / (time.perf_counter() - t)
    assert np.array_equal(first, again)
    out = {"model": str(model), "images": len(paths), "sources": clf.source_names_,
           "first_call_img_per_s": round(cold, 1), "warm_img_per_s": round(warm, 1)}
    if clf.cascade_ is not None:
        from genderfusion.fusion.training.speed import cascade_speed

        out["cascade"] = cascade_speed(clf, paths)
    out["ms_per_image"] = step_times(clf, paths)
    return out


def step_times(clf, paths: list[Path]) -> dict[str, float]:
    """Warm milliseconds an image of each step of a built model's predict_proba (wall time on all cores)."""
    from genderfusion.fusion.model import classifier

    spent: dict[str, float] = {}

    def timed(key: str, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
            return out
        return run

    views = clf._inputs
    clf._inputs = lambda arrays, inp: timed(f"input {inp.size} px" + ("" if inp.padding is None else
                                                                      f" chip p{inp.padding}"), views)(arrays, inp)
    computes = [src.compute_spaces for src in clf._built]
    for name, src in zip(clf.source_names_, clf._built):
        src.compute_spaces = timed(f"source {name}", src.compute_spaces)
    decode, classifier.decode_inputs = classifier.decode_inputs, timed("decode", classifier.decode_inputs)
    try:
        t = time.perf_counter()
        clf.predict_proba(paths)
        total = time.perf_counter() - t
    finally:
        classifier.decode_inputs, clf._inputs = decode, views
        for src, compute in zip(clf._built, computes):
            src.compute_spaces = compute
    spent["heads and the rest"] = total - sum(spent.values())
    return {k: round(1000 * v / len(paths), 2) for k, v in {**spent, "total": total}.items()}


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

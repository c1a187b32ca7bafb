"""Faces found in whole photos (dlib's HOG or CNN detector), and the square crop of each that the face networks
were trained on: the competition's crops (UTKFace, 200x200) frame a face the way `FRAMES` says."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .face_files import _package_dir, _require, checked_file

DETECTORS = ("hog", "cnn")
CROP_SIZE = 200  # the competition's crops
MIN_FACE = WINDOW = 72  # the smallest box either detector reports (HOG: 73 px); each 2x upsampling halves it
MAX_UPSAMPLE = 2  # a photo (at most 2,048 px: fusion.photos.decode.DETECT_SIDE) is doubled at most twice, to 8,192 px
SMALLEST_FACE = WINDOW // 2**MAX_UPSAMPLE  # 18 px: the smallest min_face the detectors serve
CNN_FILE = "mmod_human_face_detector.dat"
CNN_SHA256 = "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"  # face-recognition-models 0.3.0


@dataclass(frozen=True)
class Frame:
    """Where a detector's box sits in a competition crop: the crop's centre is the box's centre moved by (dx, dy)
    box widths, and its side is `side` box widths."""
    dx: float
    dy: float
    side: float


# Medians over 300 training crops (bench/scenes.py --calibrate): dlib found one face in 296 (HOG) and 300 (CNN).
FRAMES = {"hog": Frame(dx=-0.025, dy=-0.025, side=1.117), "cnn": Frame(dx=0.055, dy=0.095, side=1.22)}


@dataclass(frozen=True)
class Box:
    """A face's box in the photo's pixels (right and bottom exclusive) and the detector's confidence."""
    left: int
    top: int
    right: int
    bottom: int
    score: float

    @property
    def width(self) -> int:
        return self.right - self.left


def check_detector(kind: str, min_face: int) -> None:
    """A known detector and a positive whole number of pixels, or a ValueError naming the value."""
    if kind not in DETECTORS:
        raise ValueError(f"detector {kind!r}: one of {', '.join(DETECTORS)}")
    if isinstance(min_face, bool) or not isinstance(min_face, (int, np.integer)) or min_face < 1:
        raise ValueError(f"min_face {min_face!r}: a positive number of pixels")
    if min_face < SMALLEST_FACE:
        raise ValueError(f"min_face {min_face}: below {SMALLEST_FACE} px, the smallest face the detectors can find "
                         f"(the photo is upsampled {MAX_UPSAMPLE} times for it, each time 4x the memory and time)")


_LOADED: dict[str, object] = {}  # detector kind -> the dlib object (one per process; not for use across threads)


class FaceDetector:
    """dlib's frontal face detector: `hog` (fast) or `cnn` (mmod, from face-recognition-models; slower, finds more
    turned faces). Faces narrower than `min_face` pixels are skipped; the photo is upsampled as often as that
    needs."""

    def __init__(self, kind: str = "hog", min_face: int = MIN_FACE):
        self.kind = kind
        self.min_face = min_face

    def _model(self):
        check_detector(self.kind, self.min_face)
        if self.kind not in _LOADED:  # loading takes 0.3 s (HOG): once per process
            _require("dlib", "dlib-bin")
            import dlib

            if self.kind == "hog":
                _LOADED[self.kind] = dlib.get_frontal_face_detector()
            else:
                path = _package_dir("face_recognition_models", "face-recognition-models") / "models" / CNN_FILE
                checked_file(path, CNN_SHA256)
                _LOADED[self.kind] = dlib.cnn_face_detection_model_v1(str(path))
        return _LOADED[self.kind]

    @property
    def upsample(self) -> int:
        """Times the photo is doubled so that faces of min_face pixels reach the detector's window."""
        return max(0, math.ceil(math.log2(WINDOW / self.min_face))) if self.min_face < WINDOW else 0

    def detect(self, image: np.ndarray) -> list[Box]:
        """The faces in an HWC uint8 RGB photo, left to right, each at least min_face pixels wide."""
        net = self._model()
        found = net(np.ascontiguousarray(image), self.upsample)
        if self.kind == "hog":
            rects, scores = found, [1.0] * len(found)
        else:
            rects, scores = [d.rect for d in found], [float(d.confidence) for d in found]
        h, w = image.shape[:2]
        boxes = [Box(max(0, r.left()), max(0, r.top()), min(w, r.right() + 1), min(h, r.bottom() + 1), s)
                 for r, s in zip(rects, scores)]
        return sorted((b for b in boxes if b.width >= self.min_face), key=lambda b: (b.left, b.top))

    def best_score(self, image: np.ndarray, floor: float) -> float | None:
        """The best score of dlib's HOG detector in the photo doubled, counting windows it scores down to `floor`
        (below its own 0), whatever their size; None when no window scores that much. A permissive pass: it tells
        a face crop the normal pass misses (turned, a child) from a picture with no face at all."""
        if "hog" not in _LOADED:
            FaceDetector("hog", self.min_face)._model()
        _, scores, _ = _LOADED["hog"].run(np.ascontiguousarray(image), 1, floor)
        return max(scores) if len(scores) else None

    def frame(self, box: Box) -> tuple[float, float, float]:
        """(centre x, centre y, side) of the square a competition crop of this face would cover."""
        f, w = FRAMES[self.kind], box.width
        return (box.left + box.right) / 2 + f.dx * w, (box.top + box.bottom) / 2 + f.dy * w, f.side * w

    def crop(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The face as the networks saw faces in training: its frame, edge pixels repeated where it leaves the
        photo, resized to CROP_SIZE."""
        cx, cy, side = self.frame(box)
        left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
        size = max(1, int(round(side)))
        h, w = image.shape[:2]
        ys = np.clip(np.arange(top, top + size), 0, h - 1)
        xs = np.clip(np.arange(left, left + size), 0, w - 1)
        square = image[ys[:, None], xs[None, :]]
        return np.asarray(Image.fromarray(square).resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR))

    def frame_cover(self, box: Box, shape: tuple[int, ...]) -> float:
        """The share of the photo that the face's frame covers (intersection over union): near 1 when the photo
        already is a crop of this face."""
        cx, cy, side = self.frame(box)
        h, w = shape[:2]
        ix = max(0.0, min(w, cx + side / 2) - max(0.0, cx - side / 2))
        iy = max(0.0, min(h, cy + side / 2) - max(0.0, cy - side / 2))
        inter = ix * iy
        return inter / (w * h + side * side - inter)

"""Faces found in whole photos, and the square crop of each that the face networks were trained on: the
competition's crops (UTKFace, 200x200) frame a face the way `FRAMES` says.

Detectors: `mtcnn` and `blazeface` (CNNs run in torch, their weights shipped in the package: detector_weights), and
dlib's `hog` and `cnn` (mmod). The CNNs give eye points: a face turned in the image plane is straightened by them
before it is cropped."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .face_files import _package_dir, _require, checked_file
from .pyramid import resized

DETECTORS = ("mtcnn", "blazeface", "hog", "cnn")
CNN_DETECTORS = ("mtcnn", "blazeface")  # torch networks with eye points
CROP_SIZE = 200  # the competition's crops
WINDOW = 72  # the smallest box dlib's detectors report (HOG: 73 px); each 2x upsampling halves it
MAX_UPSAMPLE = 2  # dlib: a photo is doubled at most twice
DLIB_SIDE = 2048  # dlib's detectors see photos reduced to this long side (a face of 80 px in a 4000 px photo: 40)
# the smallest min_face each detector serves: dlib's window upsampled twice; MTCNN's P-Net window (12 px) at the
# photo's own scale; BlazeFace's least reliable face (24 px) with the photo doubled
SMALLEST_FACE = {"hog": WINDOW // 2**MAX_UPSAMPLE, "cnn": WINDOW // 2**MAX_UPSAMPLE, "mtcnn": 12, "blazeface": 12}
DEFAULT_DETECTOR = "mtcnn"  # the most faces found per second at the shipped model's accuracy (bench/scenes_hard.py)
MIN_FACE = 24  # pixels: the default's narrowest face
CNN_FILE = "mmod_human_face_detector.dat"
CNN_SHA256 = "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"  # face-recognition-models 0.3.0


@dataclass(frozen=True)
class Frame:
    """Where a detector's box sits in a competition crop: the crop's centre is the box's centre moved by (dx, dy)
    box widths, and its side is `side` box widths."""
    dx: float
    dy: float
    side: float


# Medians over 300 training crops (bench/scenes.py --calibrate): one face found in 296 (HOG), 300 (dlib's CNN),
# 294 (MTCNN) and 300 (BlazeFace). Calibrated again with the detectors' final constants, MTCNN's frame moves by
# 0.003 box widths (dx 0.018, dy 0.021; 298 crops) and BlazeFace's by 0.001: the benchmarks ran with these.
FRAMES = {"hog": Frame(dx=-0.025, dy=-0.025, side=1.117), "cnn": Frame(dx=0.055, dy=0.095, side=1.22),
          "mtcnn": Frame(dx=0.015, dy=0.019, side=1.198), "blazeface": Frame(dx=-0.003, dy=-0.014, side=1.111)}


@dataclass(frozen=True)
class Box:
    """A face's box in the photo's pixels (right and bottom exclusive), the detector's confidence, and the points
    the detector gives (x, y): the eyes as seen (left first), then others; () from dlib's detectors."""
    left: int
    top: int
    right: int
    bottom: int
    score: float
    points: tuple[tuple[float, float], ...] = ()

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def turn(self) -> float:
        """Degrees by which the face is turned in the image plane (clockwise as seen), from its eyes; 0 without."""
        if len(self.points) < 2:
            return 0.0
        (lx, ly), (rx, ry) = self.points[:2]
        return math.degrees(math.atan2(ry - ly, rx - lx))


MIN_TURN = 3.0  # degrees: a face turned less than this is cropped as it is (straightening resamples the pixels)


def check_detector(kind: str, min_face: int) -> None:
    """A known detector and a positive whole number of pixels, or a ValueError naming the value."""
    if kind not in DETECTORS:
        raise ValueError(f"detector {kind!r}: one of {', '.join(DETECTORS)}")
    if isinstance(min_face, bool) or not isinstance(min_face, (int, np.integer)) or min_face < 1:
        raise ValueError(f"min_face {min_face!r}: a positive number of pixels")
    if min_face < SMALLEST_FACE[kind]:
        raise ValueError(f"min_face {min_face}: below {SMALLEST_FACE[kind]} px, the smallest face the {kind} "
                         "detector can find")


def upsample(min_face: float) -> int:
    """Times dlib's detectors double the photo so that faces of min_face pixels reach their window."""
    return max(0, math.ceil(math.log2(WINDOW / min_face))) if min_face < WINDOW else 0


_LOADED: dict[str, object] = {}  # dlib detector kind -> the dlib object (one per process; not for use across threads)


class FaceDetector:
    """A face detector (DETECTORS) that skips faces narrower than `min_face` pixels. The CNN detectors run on
    `device` (a torch device; "auto": CUDA when there is one), find faces of min_face pixels whatever the photo's
    size (they scale the photo themselves), and straighten turned faces when `straighten`."""

    def __init__(self, kind: str = DEFAULT_DETECTOR, min_face: int = MIN_FACE, device: str = "cpu",
                 straighten: bool = True):
        self.kind = kind
        self.min_face = min_face
        self.device = device
        self.straighten = straighten

    def _model(self):
        check_detector(self.kind, self.min_face)
        if self.kind in CNN_DETECTORS:
            from genderfusion.extract.models.inference import resolve_device
            from .detector_weights import load_net

            return load_net(self.kind, resolve_device(self.device))
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

    def detect(self, image: np.ndarray) -> list[Box]:
        """The faces in an HWC uint8 RGB photo, left to right, each at least min_face pixels wide."""
        net = self._model()
        boxes = self._cnn_boxes(net, image) if self.kind in CNN_DETECTORS else self._dlib_boxes(net, image)
        return sorted((b for b in boxes if b.width >= self.min_face), key=lambda b: (b.left, b.top))

    def _dlib_boxes(self, net, image: np.ndarray) -> list[Box]:
        """dlib's boxes, found in the photo reduced to DLIB_SIDE and upsampled for small faces, at most
        MAX_UPSAMPLE times (faces that the reduction leaves under SMALLEST_FACE are not found)."""
        h, w = image.shape[:2]
        scale = min(1.0, DLIB_SIDE / max(h, w))
        small = np.ascontiguousarray(resized(image, scale))
        found = net(small, min(MAX_UPSAMPLE, upsample(self.min_face * scale)))
        if self.kind == "hog":
            rects, scores = found, [1.0] * len(found)
        else:
            rects, scores = [d.rect for d in found], [float(d.confidence) for d in found]
        return [Box(max(0, round(r.left() / scale)), max(0, round(r.top() / scale)),
                    min(w, round((r.right() + 1) / scale)), min(h, round((r.bottom() + 1) / scale)), s)
                for r, s in zip(rects, scores)]

    def _cnn_boxes(self, net, image: np.ndarray) -> list[Box]:
        if self.kind == "mtcnn":
            found, points = net.detect(image, self.min_face)
            found = found.clone()
            found[:, :2] -= 1  # MTCNN counts pixels from 1, its right and bottom inclusive
            points = points - 1
        else:
            from .blazeface import detect

            found, points = detect(net, image, self.min_face)
        h, w = image.shape[:2]
        boxes = []
        for (x1, y1, x2, y2, score), pts in zip(found.cpu().tolist(), points.cpu().tolist()):
            left, top, right, bottom = max(0, round(x1)), max(0, round(y1)), min(w, round(x2)), min(h, round(y2))
            if right > left and bottom > top:
                boxes.append(Box(left, top, right, bottom, float(score), tuple((float(x), float(y)) for x, y in pts)))
        return boxes

    def best_score(self, image: np.ndarray, floor: float) -> float | None:
        """The best face score that the detector gives anywhere in the photo, counting windows it scores down to
        `floor` (for dlib's HOG, in the photo doubled, below its own 0): None when none scores that much. A
        permissive pass: it tells a face crop the normal pass misses (turned, a child) from a picture with no
        face at all."""
        if self.kind in CNN_DETECTORS:
            score = self._whole_score(image)
            return score if score >= floor else None
        if "hog" not in _LOADED:
            FaceDetector("hog", SMALLEST_FACE["hog"])._model()
        _, scores, _ = _LOADED["hog"].run(np.ascontiguousarray(image), 1, floor)
        return max(scores) if len(scores) else None

    def _whole_score(self, image: np.ndarray) -> float:
        """The CNN's face probability for the photo taken as one face (O-Net on it at 48 px; BlazeFace's best
        anchor with the photo at 128 px)."""
        import torch

        from .pyramid import as_tensor

        net = self._model()
        device = next(net.parameters()).device
        with torch.no_grad():
            if self.kind == "mtcnn":
                from .mtcnn import normalise

                x = as_tensor(np.asarray(Image.fromarray(image).resize((48, 48), Image.BILINEAR)), device)
                return float(net.onet(normalise(x))[0][0])
            from .blazeface import decode

            x = as_tensor(np.asarray(Image.fromarray(image).resize((128, 128), Image.BILINEAR)), device) / 127.5 - 1
            rows = decode(net(x), 0.0)[0]
            return float(rows[:, 0].max()) if len(rows) else 0.0

    def frame(self, box: Box) -> tuple[float, float, float]:
        """(centre x, centre y, side) of the square a competition crop of this face would cover (its sides along
        the face's own axes when the face is straightened)."""
        f, w = FRAMES[self.kind], box.width
        dx, dy = f.dx * w, f.dy * w
        turn = math.radians(self.turn(box))
        if turn:
            dx, dy = dx * math.cos(turn) - dy * math.sin(turn), dx * math.sin(turn) + dy * math.cos(turn)
        return (box.left + box.right) / 2 + dx, (box.top + box.bottom) / 2 + dy, f.side * w

    def turn(self, box: Box) -> float:
        """Degrees by which the crop of this face is turned back: the face's turn when straightening, else 0."""
        return box.turn if self.straighten and abs(box.turn) >= MIN_TURN else 0.0

    def crop(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The face as the networks saw faces in training: its frame (straightened), edge pixels repeated where
        it leaves the photo, resized to CROP_SIZE."""
        cx, cy, side = self.frame(box)
        turn = self.turn(box)
        rad = math.radians(turn)
        span = side * (abs(math.cos(rad)) + abs(math.sin(rad)))  # the upright square that holds the turned frame
        size = max(1, int(round(span)))
        left, top = int(round(cx - size / 2)), int(round(cy - size / 2))
        h, w = image.shape[:2]
        ys = np.clip(np.arange(top, top + size), 0, h - 1)
        xs = np.clip(np.arange(left, left + size), 0, w - 1)
        square = Image.fromarray(image[ys[:, None], xs[None, :]])
        if turn:
            square = square.rotate(turn, Image.BILINEAR)  # counter-clockwise: the face upright
            inner = (size - side) / 2
            square = square.crop((round(inner), round(inner), round(inner + side), round(inner + side)))
        return np.asarray(square.resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR))

    def frame_cover(self, box: Box, shape: tuple[int, ...]) -> float:
        """The share of the photo that the face's frame covers (intersection over union): near 1 when the photo
        already is a crop of this face."""
        cx, cy, side = self.frame(box)
        h, w = shape[:2]
        ix = max(0.0, min(w, cx + side / 2) - max(0.0, cx - side / 2))
        iy = max(0.0, min(h, cy + side / 2) - max(0.0, cy - side / 2))
        inter = ix * iy
        return inter / (w * h + side * side - inter)

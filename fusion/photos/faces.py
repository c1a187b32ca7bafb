"""Which faces of a photo are classified, and where: every face a detector finds (cropped the way the competition's
crops frame a face), or the photo itself as one face. `auto` decides per photo and names the rule that decided."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genderfusion.extract.faces.detect import FaceDetector, check_detector

FACE_MODES = ("auto", "detect", "whole")
# the `rule` column
DETECTED = "detected"  # a face the detector found, cropped to its frame
WHOLE = "whole"  # faces="whole": the photo is one face
FILLS = "fills-photo"  # auto: the one face found fills the photo (a face crop): the photo as it is
CROP_LIKE = "crop-like"  # auto: no face found, but the photo is small and square like a face crop
FILL_SHARE = 0.6  # auto: a face whose frame covers this share of the photo (intersection over union) fills it
CROP_LIKE_SIDE, CROP_LIKE_ASPECT = 400, 1.25  # auto: no side above this many pixels, long/short side at most this
# ... and it must look like a face: sides of at least CROP_LIKE_MIN_SIDE, grey levels spread by at least
# CROP_LIKE_MIN_STD (not a uniform square), and the detector's permissive pass (FaceDetector.best_score: HOG's best
# window, in HOG's units; the CNNs' face probability of the whole image) scoring CROP_LIKE_SCORE or more. Chosen on
# training crops (bench/crop_like.py, --detector): see its results. MTCNN: of the 26 crops in 3,000 it misses, 23
# score 0.91-1.0 as a whole and 3 under 0.19; pictures without a face 0.034 at most.
CROP_LIKE_MIN_SIDE, CROP_LIKE_MIN_STD = 48, 8.0
CROP_LIKE_SCORE = {"hog": -0.8, "cnn": -0.8, "mtcnn": 0.5, "blazeface": 0.5}
# a found face narrower than this many pixels is reported `doubtful` whatever its P(female): below it the face
# networks agree with their label for the competition's crop of the same face less than 95 % of the time (hard
# scenes, default detector: 84.9 % at 20-31 px, 91.7 % at 32-47, 97.2 % at 48-71; bench/results/scenes_hard.md)
SMALL_FACE = 48
NO_FACE = "no face"  # the rule of a photo in which no face was found: its one row has no box and no label


@dataclass(frozen=True)
class Face:
    """One face of a photo: its box in the photo's pixels, the pixels the networks get, and the rule that chose
    them."""
    box: tuple[int, int, int, int]
    pixels: np.ndarray
    rule: str

    @property
    def small(self) -> bool:
        """A found face too narrow for the face networks to be reliable (SMALL_FACE)."""
        return self.rule == DETECTED and self.box[2] - self.box[0] < SMALL_FACE


def check_face_options(faces: str, detector: str, min_face: int) -> None:
    if faces not in FACE_MODES:
        raise ValueError(f"faces {faces!r}: one of {', '.join(FACE_MODES)}")
    check_detector(detector, min_face)


def crop_like(shape: tuple[int, ...]) -> bool:
    """Small and square, as a face crop is."""
    h, w = shape[:2]
    return CROP_LIKE_MIN_SIDE <= min(h, w) and max(h, w) <= CROP_LIKE_SIDE and max(h, w) / min(h, w) <= CROP_LIKE_ASPECT


def looks_like_face(image: np.ndarray, detector: FaceDetector) -> bool:
    """A crop-like image with structure in which the permissive detector pass sees something face-like."""
    grey = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if grey.std() < CROP_LIKE_MIN_STD:
        return False
    floor = CROP_LIKE_SCORE[detector.kind]
    score = detector.best_score(image, floor)
    return score is not None and score >= floor


def faces_of(image: np.ndarray, faces: str, detector: FaceDetector | None) -> list[Face]:
    """The faces of an HWC uint8 RGB photo to classify under `faces` (auto, detect, whole); [] when none."""
    h, w = image.shape[:2]
    if faces == WHOLE:
        return [Face((0, 0, w, h), image, WHOLE)]
    boxes = detector.detect(image)
    if faces == "auto":
        if len(boxes) == 1 and detector.frame_cover(boxes[0], image.shape) >= FILL_SHARE:
            return [Face((0, 0, w, h), image, FILLS)]
        if not boxes and crop_like(image.shape) and looks_like_face(image, detector):
            return [Face((0, 0, w, h), image, CROP_LIKE)]
    return [Face((b.left, b.top, b.right, b.bottom), detector.crop(image, b), DETECTED) for b in boxes]

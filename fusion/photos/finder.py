"""Photos decoded and their faces found (photos.faces), in this process or in worker processes."""
from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from genderfusion.extract.errors import BadImageError
from genderfusion.extract.faces.detect import DEFAULT_DETECTOR, MIN_FACE
from genderfusion.extract.faces.pyramid import resized

from genderfusion.fusion.photos.decode import DETECT_SIDE, MAX_SIDE, decode_one
from genderfusion.fusion.photos.faces import WHOLE, Face, check_face_options, faces_of


DRAW_SIDE = 2048  # a photo kept for drawing is reduced to this long side (faces are found at up to DETECT_SIDE)


@dataclass(frozen=True)
class Found:
    """One photo's faces, boxes in the photo's own pixels; the photo as decoded (when kept), and how much larger the
    photo is than that."""
    image: np.ndarray | None
    faces: list[Face]
    scale: float


class FaceFinder:
    """Decodes photos and finds their faces: faces auto|detect|whole, the detector, min_face pixels, the device
    the CNN detectors run on, and the worker processes that do it for photo files (1: in this process; several:
    each on the CPU with one thread). close() ends the workers."""

    def __init__(self, faces: str = "auto", detector: str = DEFAULT_DETECTOR, min_face: int = MIN_FACE,
                 workers: int = 1, device: str = "cpu"):
        check_face_options(faces, detector, min_face)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers {workers!r}: a positive integer")
        self.faces, self.detector, self.min_face, self.workers = faces, detector, int(min_face), workers
        self.device = device
        self._detector = self._pool = None

    @property
    def max_side(self) -> int:
        return MAX_SIDE if self.faces == WHOLE else DETECT_SIDE

    def faces_in(self, image: np.ndarray) -> list[Face]:
        """The faces of one decoded photo."""
        if self.faces != WHOLE and self._detector is None:
            from genderfusion.extract.faces.detect import FaceDetector

            self._detector = FaceDetector(self.detector, self.min_face, self.device)
        return faces_of(image, self.faces, self._detector)

    def find(self, items: Sequence, keep_images: bool) -> Iterator[Found | Exception]:
        """Per item, in order: what it holds (Found), or the exception that decoding it raised. Photo files go to
        the worker processes when there are several."""
        jobs = [(item, i, keep_images) for i, item in enumerate(items)]
        key = (self.faces, self.detector, self.min_face, 1, "cpu")  # how a worker process finds faces
        if self.workers > 1 and self.faces != WHOLE and len(items) > 1 \
                and all(isinstance(x, (str, os.PathLike)) for x in items):
            if self._pool is None:
                from genderfusion.extract.workers import worker_pool

                self._pool = worker_pool(self.workers)
            return self._pool.map(_find_one, [key] * len(jobs), jobs)
        return (_find_one(key, job, self) for job in jobs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


_WORKER_FINDERS: dict[tuple, FaceFinder] = {}


def _find_one(key: tuple, job: tuple, finder: FaceFinder | None = None) -> Found | Exception:
    """Decode one input and find its faces (in a worker process: with that process's finder for `key`)."""
    if finder is None:
        if not _WORKER_FINDERS:  # a worker process: one thread, as many processes as cores
            import torch

            torch.set_num_threads(1)
        finder = _WORKER_FINDERS.get(key) or _WORKER_FINDERS.setdefault(key, FaceFinder(*key))
    item, index, keep_image = job
    try:
        image = decode_one(item, index, finder.max_side)
    except (BadImageError, FileNotFoundError, ValueError, TypeError) as exc:
        return exc
    found = finder.faces_in(image)
    long = max(image.shape[:2])
    scale = max(1.0, _long_side(item) / long) if long >= finder.max_side else 1.0  # reduced ones reach max_side
    if scale > 1:
        found = [dataclasses.replace(f, box=tuple(round(v * scale) for v in f.box)) for f in found]
    if not keep_image:
        return Found(None, found, scale)
    if long > DRAW_SIDE:  # the copy kept for drawing: a step's photos stay within memory
        image = resized(image, DRAW_SIDE / long)
        scale *= long / max(image.shape[:2])
    return Found(image, found, scale)


def _long_side(item) -> int:
    """The long side of a photo file (or the bytes of one) as stored; 0 for an image in memory."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
        with Image.open(item if isinstance(item, (str, os.PathLike)) else io.BytesIO(bytes(item))) as im:
            return max(im.size)
    return 0

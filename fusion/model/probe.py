"""The probe image: a fixed synthetic picture whose features, source by source, are stored with a model when it is
trained. Before its first prediction the model computes them again with the networks its metadata names and
compares: a source block of another width, or of other values (metadata that names the wrong network, a swapped
order), is refused instead of giving confident nonsense."""
from __future__ import annotations

import numpy as np

SIZE = 200  # a competition crop's size
TOLERANCE = 0.05  # relative L2 difference allowed (devices, thread counts, library versions: about 1e-5)


def probe_image() -> np.ndarray:
    """A 200 x 200 RGB picture with a face's rough layout (an oval, two eyes, a mouth on a gradient), the same on
    every machine: drawn from integer arithmetic only."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    image = np.stack([60 + x * 3 // 4, 80 + y // 2, 200 - (x + y) // 4], axis=-1)
    face = ((x - 100) ** 2) * 9 + ((y - 105) ** 2) * 5 < 70 ** 2 * 5
    image[face] = (205, 160, 135)
    for cx in (78, 122):
        image[((x - cx) ** 2 + (y - 88) ** 2) < 64] = (40, 30, 30)
    image[(np.abs(x - 100) < 18) & (np.abs(y - 140) < 4)] = (150, 60, 60)
    return image.astype(np.uint8)


def relative_difference(now: np.ndarray, then: np.ndarray) -> float:
    now, then = now.astype(np.float64), then.astype(np.float64)
    return float(np.linalg.norm(now - then) / max(np.linalg.norm(then), 1e-12))

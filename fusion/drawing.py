"""Photos drawn with each face's box, label and P(female) (`predict --draw DIR`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from genderfusion.extract.atomic import atomic_path

COLOURS = {1: (230, 80, 160), 0: (40, 130, 230)}  # female, male
DOUBTFUL = (250, 200, 40)


def draw_faces(image: np.ndarray, rows: list[dict], threshold: float = 0.5, scale: float = 1.0) -> Image.Image:
    """The photo with a box per face row: magenta female, blue male, yellow where doubtful; the label and
    P(female) above it. scale: the rows' boxes are in pixels of a photo this much larger than `image`."""
    out = Image.fromarray(image)
    pen = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 400))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 45)))
    for r in rows:
        if r["error"]:
            continue
        box = tuple(round(v / scale) for v in (r["left"], r["top"], r["right"] - 1, r["bottom"] - 1))
        colour = DOUBTFUL if r["doubtful"] else COLOURS[int(r["p_female"] >= threshold)]
        pen.rectangle(box, outline=colour, width=width)
        text = f"{'female' if r['p_female'] >= threshold else 'male'} {r['p_female']:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        y = box[1] - (bottom - top) - 2 * width if box[1] > (bottom - top) + 2 * width else box[3] + width
        pen.rectangle((box[0], y, box[0] + right - left + 2 * width, y + bottom - top + 2 * width), fill=colour)
        pen.text((box[0] + width - left, y + width - top), text, fill=(255, 255, 255), font=font)
    return out


class Drawer:
    """Writes each photo it is shown, drawn, as <folder>/<file stem>.jpg (a second photo of the same stem gets
    -2, -3 ...), each file written atomically."""

    def __init__(self, folder: str | os.PathLike, threshold: float = 0.5):
        self.folder, self.threshold = Path(folder), threshold
        self.folder.mkdir(parents=True, exist_ok=True)
        self._used: set[str] = set()

    def _name(self, path: str) -> Path:
        stem = Path(path).stem if not path.startswith("<") else path.strip("<>").replace(" ", "-")
        name, n = stem, 1
        while name in self._used:
            n += 1
            name = f"{stem}-{n}"
        self._used.add(name)
        return self.folder / f"{name}.jpg"

    def __call__(self, path: str, image: np.ndarray, rows: list[dict], scale: float = 1.0) -> None:
        with atomic_path(self._name(path)) as tmp:
            draw_faces(image, rows, self.threshold, scale).save(tmp, format="JPEG", quality=90)

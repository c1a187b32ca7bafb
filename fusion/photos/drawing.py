"""Photos drawn with each face's box, label and P(female), into a folder of their own."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from genderfusion.files.atomic import atomic_path
from genderfusion.files.paths import inside
from genderfusion.option_errors import option_error

COLOURS = {1: (230, 80, 160), 0: (40, 130, 230)}  # female, male
DOUBTFUL = (250, 200, 40)


def draw_faces(image: np.ndarray, rows: list[dict], scale: float = 1.0) -> Image.Image:
    """The photo with a box per face row: magenta female, blue male, yellow where doubtful; the label and
    P(female) above it. scale: the rows' boxes are in pixels of a photo this much larger than `image`."""
    out = Image.fromarray(image)
    pen = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 400))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 45)))
    for r in rows:
        if r["face"] is None:  # a photo without a face, or unreadable
            continue
        box = tuple(round(v / scale) for v in (r["left"], r["top"], r["right"] - 1, r["bottom"] - 1))
        colour = DOUBTFUL if r["doubtful"] else COLOURS[r["label"]]
        pen.rectangle(box, outline=colour, width=width)
        text = f"{('male', 'female')[r['label']]} {r['p_female']:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        y = box[1] - (bottom - top) - 2 * width if box[1] > (bottom - top) + 2 * width else box[3] + width
        pen.rectangle((box[0], y, box[0] + right - left + 2 * width, y + bottom - top + 2 * width), fill=colour)
        pen.text((box[0] + width - left, y + width - top), text, fill=(255, 255, 255), font=font)
    return out


class OutputExistsError(FileExistsError):
    """An output the run would write where a file it did not write already is: `what` says which, `remedy` what
    to do (the CLI names its flags instead)."""

    def __init__(self, what: str, remedy: str):
        super().__init__(f"{what}: {remedy}")
        self.what = what


def drawn_names(folder: str | os.PathLike, inputs: Sequence[str | os.PathLike], overwrite: bool = False
                ) -> dict[str, Path]:
    """input -> <folder>/<file stem>.jpg (a second input of the same stem gets -2, -3 ...), checked before any
    work: the folder must hold none of the inputs (a drawn photo never replaces one), and, unless overwrite, none
    of the files that would be written may exist already."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise option_error(NotADirectoryError, "draw", f"{folder}: not a folder; name a folder for the drawn photos",
                           "draw folder")
    held = [p for p in inputs if inside(p, folder)]
    if held:
        raise option_error(ValueError, "draw", f"{folder} holds the input {held[0]}"
                           + (f" and {len(held) - 1} more" if len(held) > 1 else "")
                           + ": drawn photos go into a folder of their own, never over the photos read", "draw folder")
    names, used = {}, set()
    for path in map(str, inputs):
        stem = Path(path).stem if not path.startswith("<") else path.strip("<>").replace(" ", "-")
        name, n = stem, 1
        while name.lower() in used:  # case-insensitive file systems too
            n += 1
            name = f"{stem}-{n}"
        used.add(name.lower())
        names[path] = folder / f"{name}.jpg"
    there = [t for t in names.values() if os.path.lexists(t)]
    if there and not overwrite:
        raise OutputExistsError(f"{there[0]} exists" + (f" (and {len(there) - 1} more drawn name(s))"
                                                        if len(there) > 1 else "") + " and this run did not write it",
                                "overwrite=True replaces such files")
    return names


class Drawer:
    """Writes each photo it is shown, drawn, under the name drawn_names gave it, each file written atomically."""

    def __init__(self, folder: str | os.PathLike, inputs: Sequence[str | os.PathLike], overwrite: bool = False):
        self.folder = Path(folder)
        self._names = drawn_names(folder, inputs, overwrite)

    def __call__(self, path: str, image: np.ndarray, rows: list[dict], scale: float = 1.0) -> None:
        with atomic_path(self._names[path]) as tmp:
            draw_faces(image, rows, scale).save(tmp, format="JPEG", quality=90)

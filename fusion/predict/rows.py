"""One row per face of each photo: path, face, box, P(female), label, doubtful, stage, rule, error."""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

from genderfusion.files.paths import printable
from genderfusion.extract.errors import BadImageError

from genderfusion.fusion.photos.decode import as_items
from genderfusion.fusion.photos.faces import NO_FACE
from genderfusion.fusion.predict.options import PhotoOptions

BOX = ("left", "top", "right", "bottom")
COLUMNS = ("path", "face", *BOX, "p_female", "label", "doubtful", "stage", "rule", "error")
INTS = ("face", *BOX, "label", "stage")


class NoFaceError(ValueError):
    """A photo in which no face was found (without skip_bad)."""

    def __init__(self, name: str, detector: str, min_face: int):
        super().__init__(f"{name}: {NO_FACE} (detector {detector}, faces of {min_face} px or more); skip_bad keeps "
                         "such photos as a row with this error, faces='whole' classifies the whole photo")
        self.name, self.detector, self.min_face = name, detector, min_face

    def __reduce__(self):
        return type(self), (self.name, self.detector, self.min_face)


def _error_row(index: int, name: str, error: str) -> dict:
    return {"image": index, "path": name, "face": -1, **dict.fromkeys(BOX, -1), "p_female": math.nan, "label": -1,
            "doubtful": True, "stage": 0, "rule": "", "error": error}


def csv_cells(row: dict) -> list[str]:
    """A row as the cells of the CSV output (and of the table the CLI prints)."""
    return [printable(row["path"]), str(row["face"]), *(str(row[c]) for c in BOX),
            "" if math.isnan(row["p_female"]) else f"{row['p_female']:.6f}", str(row["label"]),
            str(int(row["doubtful"])), str(row["stage"]), row["rule"], printable(row["error"])]


Draw = Callable[[str, object, list, float], None]  # (name, photo as decoded, its rows, how much larger the photo is)


class PhotoPredictor:
    """A model and the options to predict photos with: rows(items, names) gives one row per face. It holds the face
    finder, and its worker processes, until close()."""

    def __init__(self, clf, options: PhotoOptions | None = None):
        self.clf = clf
        self.options = options or PhotoOptions()
        self.band = self.options.band_of(clf)
        self.finder = self.options.finder()

    def rows(self, items: Sequence, names: Sequence[str], draw: Draw | None = None) -> list[dict]:
        """One row per face, photo by photo in order (`image`: the item's index). An unreadable photo (or one without
        a face) is an error naming it, or (skip_bad) a row with the error. draw sees each readable photo."""
        o = self.options
        crops, rows, photos = [], [], []
        for i, (name, got) in enumerate(zip(names, self.finder.find(items, draw is not None))):
            if isinstance(got, Exception):
                if not o.skip_bad:
                    raise got
                # an undecodable input is named as the caller names it (an upload by its name, not its index)
                rows.append(_error_row(i, name, str(BadImageError(name, got.reason)
                                                    if isinstance(got, BadImageError) else got)))
                continue
            if not got.faces:
                if not o.skip_bad:
                    raise NoFaceError(name, o.detector, o.min_face)
                rows.append(_error_row(i, name, NO_FACE))
            for k, face in enumerate(got.faces):
                crops.append(face.pixels)
                rows.append({"image": i, "path": name, "face": k, **dict(zip(BOX, face.box)), "rule": face.rule,
                             "error": ""})
            if draw is not None:
                photos.append((name, got.image, len(rows) - max(1, len(got.faces)), len(rows), got.scale))
        d = self.clf.predict_details(crops, batch_size=o.batch_size, device=o.device, band=self.band,
                                     cascade=o.cascade) if crops else None
        n = -1
        for row in rows:
            if not row["error"]:
                n += 1
                q = float(d["p_female"][n])
                row.update(p_female=q, label=int(q >= self.clf.threshold), doubtful=bool(d["doubtful"][n]),
                           stage=int(d["stage"][n]))
        if draw is not None:
            for name, image, start, stop, scale in photos:
                draw(name, image, rows[start:stop], scale)
        return rows

    def close(self) -> None:
        self.finder.close()

    def __enter__(self) -> "PhotoPredictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predict_frame(clf, images, options: PhotoOptions | None = None):
    """A pandas DataFrame with COLUMNS, one row per face (paths, PIL images, arrays or tensors; an in-memory
    image's path is '<image i>')."""
    import pandas as pd

    items = as_items(images)
    names = [str(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>" for i, x in enumerate(items)]
    with PhotoPredictor(clf, options) as predictor:
        rows = predictor.rows(items, names)
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype({c: "int64" for c in INTS})

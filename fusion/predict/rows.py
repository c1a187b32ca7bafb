"""One row per face of each photo: path, face, box, P(female), label, doubtful, stage, rule, error. A photo in which
no face is found is one row with rule `no face`, and an unreadable one (with skip_bad) one row with its error; their
missing values are None (empty in CSV, null in Parquet and JSON, NA in a DataFrame), never a number."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from genderfusion.files.paths import printable
from genderfusion.extract.errors import BadImageError

from genderfusion.fusion.photos.decode import as_items
from genderfusion.fusion.photos.faces import NO_FACE
from genderfusion.fusion.photos.inputs import walk
from genderfusion.fusion.predict.options import PhotoOptions

BOX = ("left", "top", "right", "bottom")
COLUMNS = ("path", "face", *BOX, "p_female", "label", "doubtful", "stage", "rule", "error")
INTS = ("face", *BOX, "label", "stage")
FRAME_TYPES = {**dict.fromkeys(INTS, "Int64"), "p_female": "Float64", "doubtful": "boolean"}


def _faceless_row(index: int, name: str, rule: str, error: str = "") -> dict:
    """The one row of a photo without a face (rule NO_FACE) or of an unreadable one (its error)."""
    return {"image": index, "path": name, **dict.fromkeys(("face", *BOX, "p_female", "label", "doubtful", "stage")),
            "rule": rule, "error": error}


def is_face(row: dict) -> bool:
    return row["face"] is not None


def csv_cells(row: dict) -> list[str]:
    """A row as the cells of the CSV output (and of the table the CLI prints)."""
    if not is_face(row):
        return [printable(row["path"]), *[""] * (len(COLUMNS) - 3), row["rule"], printable(row["error"])]
    return [printable(row["path"]), str(row["face"]), *(str(row[c]) for c in BOX), f"{row['p_female']:.6f}",
            str(row["label"]), str(int(row["doubtful"])), str(row["stage"]), row["rule"], ""]


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
        """One row per face, photo by photo in order (`image`: the item's index); a photo without a face is one row
        with rule `no face`. An unreadable photo is an error naming it, or (skip_bad) a row with the error. draw sees
        each readable photo."""
        o = self.options
        crops, rows, photos = [], [], []
        for i, (name, got) in enumerate(zip(names, self.finder.find(items, draw is not None))):
            if isinstance(got, Exception):
                if not o.skip_bad:
                    raise got
                # an undecodable input is named as the caller names it (an upload by its name, not its index)
                rows.append(_faceless_row(i, name, "", str(BadImageError(name, got.reason)
                                                           if isinstance(got, BadImageError) else got)))
                continue
            if not got.faces:
                rows.append(_faceless_row(i, name, NO_FACE))
            for k, face in enumerate(got.faces):
                crops.append(face.pixels)
                rows.append({"image": i, "path": name, "face": k, **dict(zip(BOX, face.box)), "rule": face.rule,
                             "error": "", "small": face.small})
            if draw is not None:
                photos.append((name, got.image, len(rows) - max(1, len(got.faces)), len(rows), got.scale))
        d = self.clf.predict_details(crops, batch_size=o.batch_size, device=o.device, band=self.band,
                                     cascade=o.cascade) if crops else None
        n = -1
        for row in rows:
            if is_face(row):
                n += 1
                q = float(d["p_female"][n])
                row.update(p_female=q, label=int(q >= self.clf.threshold),
                           doubtful=bool(d["doubtful"][n]) or row.pop("small"), stage=int(d["stage"][n]))
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
    """A pandas DataFrame with COLUMNS, one row per face of each input (paths, folders of photos, PIL images, arrays
    or tensors; an in-memory image's path is '<image i>'); missing values are NA (nullable Int64, Float64 and
    boolean columns)."""
    import pandas as pd

    items = [p for x in as_items(images) for p in (walk(Path(x)) if isinstance(x, (str, os.PathLike))
                                                    and Path(x).is_dir() else [x])]
    names = [str(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>" for i, x in enumerate(items)]
    with PhotoPredictor(clf, options) as predictor:
        rows = predictor.rows(items, names)
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(FRAME_TYPES)

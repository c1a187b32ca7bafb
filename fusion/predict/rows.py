"""Predicting any photos: one row per face (path, face, box, P(female), label, doubtful, stage, rule, error),
streamed in batches with bounded memory to a CSV or Parquet file (`predict --images`), or returned as a DataFrame
(`predict_frame`)."""
from __future__ import annotations

import dataclasses
import glob
import io
import math
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from genderfusion.files.atomic import atomic_path

from genderfusion.files.outputs import check_output
from genderfusion.extract.errors import BadImageError

from genderfusion.extract.faces.detect import MIN_FACE
from genderfusion.files.paths import printable, special_kind

from genderfusion.fusion.photos.faces import NO_FACE, WHOLE, Located, check_face_options, locate
from genderfusion.fusion.photos.decode import DETECT_SIDE, MAX_SIDE, as_items, decode_one

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
BOX = ("left", "top", "right", "bottom")
COLUMNS = ("path", "face", *BOX, "p_female", "label", "doubtful", "stage", "rule", "error")
INTS = ("face", *BOX, "label", "stage")
TABLES = (".csv", ".parquet")


def check_table(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """The output table: a .csv or .parquet file, none of the inputs, in a folder that can be written."""
    return check_output(out, TABLES, inputs)


def _walk(folder: Path) -> list[Path]:
    """Image files under a folder, sorted, following symbolic links to files and folders (each real folder once:
    a link cycle ends); a broken link with an image suffix is kept, so that it is reported, not dropped."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(root) / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _listed(path: Path) -> list[Path]:
    """The paths a .txt list names, one a line (relative to the list's folder); an unreadable or empty list is an
    error naming it."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file of image paths ({exc.reason} at byte {exc.start}); "
                         "save it as UTF-8") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise FileNotFoundError(f"{path}: lists no image paths")
    return [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines]


def expand_paths(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files from folders (recursively, by suffix, sorted, symbolic links followed), glob patterns, text
    files listing one path a line (.txt), or image files; a path that does not exist, a glob without a match, an
    empty folder or an empty list is an error naming it."""
    out: list[Path] = []
    for item in items:
        text = str(item)
        if not text.strip():
            raise ValueError(f"{text!r}: an empty path; name a photo, a folder, a glob or a .txt list")
        path = Path(text)
        kind = special_kind(path)
        if kind not in (None, "a folder") and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{text}: {kind}, not an image file or a folder; not read")
        if path.is_dir():
            found = _walk(path)
            if not found:
                raise FileNotFoundError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif path.is_file() and path.suffix.lower() == ".txt":
            out += _listed(path)
        elif path.is_file() or path.is_symlink() or kind:  # a broken link or a FIFO is kept, to be reported
            out.append(path)
        elif any(c in text for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"{text}: no file matches this pattern")
            out += found
        else:
            raise FileNotFoundError(f"{text}: no such file or folder")
    return out


class FaceOptions:
    """How faces are found in each photo (fusion.faces): faces auto|detect|whole, the detector, min_face pixels,
    and the worker processes that decode photo files and find their faces (1: in this process)."""

    def __init__(self, faces: str = "auto", detector: str = "hog", min_face: int = MIN_FACE, workers: int = 1):
        check_face_options(faces, detector, min_face)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers {workers!r}: a positive integer")
        self.faces, self.detector, self.min_face, self.workers = faces, detector, int(min_face), workers
        self._detector = self._pool = None

    def locate(self, image) -> list[Located]:
        if self.faces != WHOLE and self._detector is None:
            from genderfusion.extract.faces.detect import FaceDetector

            self._detector = FaceDetector(self.detector, self.min_face)
        return locate(image, self.faces, self._detector)

    @property
    def max_side(self) -> int:
        return MAX_SIDE if self.faces == WHOLE else DETECT_SIDE

    def no_face(self, name: str) -> str:
        return (f"{name}: {NO_FACE} (detector {self.detector}, faces of {self.min_face} px or more); --skip-bad "
                "keeps such photos as a row with this error, --faces whole classifies the whole photo")

    def located(self, items: Sequence, keep_images: bool) -> Iterator:
        """Per item, in order: (the decoded image, or None unless keep_images, its faces), or the exception that
        decoding raised. Photo files go to the worker processes when there are several."""
        jobs = [(item, i, keep_images) for i, item in enumerate(items)]
        if self.workers > 1 and self.faces != WHOLE and len(items) > 1 \
                and all(isinstance(x, (str, os.PathLike)) for x in items):
            if self._pool is None:
                from genderfusion.extract.workers import worker_pool

                self._pool = worker_pool(self.workers)
            return self._pool.map(_located, [(self.faces, self.detector, self.min_face)] * len(jobs), jobs)
        return (_located((self.faces, self.detector, self.min_face), job, self) for job in jobs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


_WORKER_OPTIONS: dict[tuple, FaceOptions] = {}


def _located(key: tuple, job: tuple, options: FaceOptions | None = None):
    """Decode one input and find its faces: (image or None, faces in the photo's own pixels, how much larger the
    photo is than the image as decoded), or the exception decoding raised."""
    if options is None:
        options = _WORKER_OPTIONS.get(key) or _WORKER_OPTIONS.setdefault(key, FaceOptions(*key))
    item, index, keep_image = job
    try:
        image = decode_one(item, index, options.max_side)
    except (BadImageError, FileNotFoundError, ValueError, TypeError) as exc:
        return exc
    found = options.locate(image)
    long = max(image.shape[:2])
    scale = max(1.0, _long_side(item) / long) if long >= options.max_side else 1.0  # reduced ones reach max_side
    if scale > 1:
        found = [dataclasses.replace(f, box=tuple(round(v * scale) for v in f.box)) for f in found]
    return (image if keep_image else None), found, scale


def _long_side(item) -> int:
    """The long side of a photo file (or the bytes of one) as stored; 0 for an image in memory."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
        with Image.open(item if isinstance(item, (str, os.PathLike)) else io.BytesIO(bytes(item))) as im:
            return max(im.size)
    return 0


def _error_row(index: int, name: str, error: str) -> dict:
    return {"image": index, "path": name, "face": -1, **dict.fromkeys(BOX, -1), "p_female": math.nan, "label": -1,
            "doubtful": True, "stage": 0, "rule": "", "error": error}


def face_rows(clf, items: Sequence, names: Sequence[str], band: tuple[float, float], skip_bad: bool,
          batch_size: int, device: str, cascade: bool, options: FaceOptions, draw=None) -> list[dict]:
    """One row per face, photo by photo in order (`image`: the item's index); an unreadable photo (or, unless skip_bad, one without a face) is
    an error naming it, or (skip_bad) a row with the error. draw(name, image, rows, scale) sees each readable photo
    (scale: how much larger the photo is than `image`, as decoded)."""
    crops, rows, photos = [], [], []
    for i, (name, got) in enumerate(zip(names, options.located(items, draw is not None))):
        if isinstance(got, Exception):
            if not skip_bad:
                raise got
            # an undecodable input is named as the caller names it (an upload by its name, not its index)
            rows.append(_error_row(i, name, str(BadImageError(name, got.reason) if isinstance(got, BadImageError)
                                               else got)))
            continue
        image, found, scale = got
        if not found:
            if not skip_bad:
                raise ValueError(options.no_face(name))
            rows.append(_error_row(i, name, NO_FACE))
        for k, face in enumerate(found):
            crops.append(face.pixels)
            rows.append({"image": i, "path": name, "face": k, **dict(zip(BOX, face.box)), "rule": face.rule,
                         "error": ""})
        if draw is not None:
            photos.append((name, image, len(rows) - max(1, len(found)), len(rows), scale))
    d = clf.predict_details(crops, batch_size=batch_size, device=device, band=band, cascade=cascade) if crops \
        else None
    n = -1
    for row in rows:
        if not row["error"]:
            n += 1
            q = float(d["p_female"][n])
            row.update(p_female=q, label=int(q >= clf.threshold), doubtful=bool(d["doubtful"][n]),
                       stage=int(d["stage"][n]))
    if draw is not None:
        for name, image, start, stop, scale in photos:
            draw(name, image, rows[start:stop], scale)
    return rows


def predict_frame(clf, images, options: FaceOptions, band: tuple[float, float] = (0.45, 0.55),
                  skip_bad: bool = False, batch_size: int = 256, device: str = "auto", cascade: bool = True):
    """A pandas DataFrame with COLUMNS, one row per face (paths, PIL images, arrays or tensors; an in-memory
    image's path is '<image i>')."""
    import pandas as pd

    items = as_items(images)
    names = [str(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>" for i, x in enumerate(items)]
    try:
        rows = face_rows(clf, items, names, band, skip_bad, batch_size, device, cascade, options)
    finally:
        options.close()
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype({c: "int64" for c in INTS})


def _chunks(paths: list[Path], n: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), n):
        yield paths[start:start + n]


class _Writer:
    """Rows appended to a temporary CSV or Parquet file, renamed into place only when every row is written."""

    def __init__(self, tmp: Path, parquet: bool):
        self.tmp, self.parquet = tmp, parquet
        if parquet:
            import importlib.util

            if importlib.util.find_spec("pyarrow") is None:
                raise ValueError("writing Parquet needs pyarrow (pip install pyarrow); or name a .csv file")
            self._pq = None
        else:
            self._fh = open(tmp, "w", encoding="utf-8", newline="")
            self._fh.write(",".join(COLUMNS) + "\n")

    def write(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = [{**r, "path": printable(r["path"]), "error": printable(r["error"])} for r in rows]
            types = {"p_female": pa.float64(), "doubtful": pa.bool_(), **dict.fromkeys(INTS, pa.int64())}
            schema = pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])
            table = pa.Table.from_pylist(rows, schema=schema)
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.tmp, table.schema)
            self._pq.write_table(table)
            return
        import csv

        w = csv.writer(self._fh)
        for r in rows:
            w.writerow([printable(r["path"]), r["face"], *(r[c] for c in BOX),
                        "" if math.isnan(r["p_female"]) else f"{r['p_female']:.6f}", r["label"], int(r["doubtful"]),
                        r["stage"], r["rule"], printable(r["error"])])

    def close(self) -> None:
        if self.parquet:
            if self._pq is not None:
                self._pq.close()
        else:
            self._fh.close()


def predict_images(clf, images: Sequence[str | os.PathLike], out: str | os.PathLike, batch_size: int = 256,
                   skip_bad: bool = False, band: tuple[float, float] = (0.45, 0.55), device: str = "auto",
                   progress: bool = True, cascade: bool = True, options: FaceOptions | None = None,
                   draw=None, overwrite: bool = False) -> dict:
    """Predict every face of every photo of `images` (folders, globs, lists, files) into `out` (.csv, or
    .parquet), batch by batch: memory holds one batch. Without skip_bad, the first unreadable file (or photo
    without a face) stops the run, naming it, and no output is left; with it, the file's row carries the error.
    draw: a folder (or a drawing.Drawer) that gets each photo with its faces' boxes, labels and P(female); it
    holds no input, and replaces a file there only with overwrite."""
    from tqdm.auto import tqdm

    options = options or FaceOptions()
    paths = expand_paths(images)
    out = check_table(out, [*images, *paths])
    from genderfusion.fusion.photos.drawing import Drawer

    drawer = draw if draw is None or isinstance(draw, Drawer) else Drawer(draw, paths, overwrite)
    t0 = time.time()
    n_err = n_female = n_doubtful = n_faces = 0
    with atomic_path(out) as tmp:
        writer = _Writer(Path(tmp), out.suffix.lower() == ".parquet")
        try:
            with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
                for chunk in _chunks(paths, batch_size):
                    rows = face_rows(clf, chunk, [str(p) for p in chunk], band, skip_bad, batch_size, device,
                                     cascade, options, drawer)
                    writer.write(rows)
                    n_err += sum(bool(r["error"]) for r in rows)
                    n_faces += sum(not r["error"] for r in rows)
                    n_female += sum(r["label"] == 1 for r in rows)
                    n_doubtful += sum(bool(r["doubtful"]) and not r["error"] for r in rows)
                    bar.update(len(chunk))
        finally:
            writer.close()
            options.close()
    seconds = time.time() - t0
    return {"out": str(out), "images": len(paths), "faces": n_faces, "errors": n_err, "female": n_female,
            "doubtful": n_doubtful, "faces_mode": options.faces, "detector": options.detector,
            "min_face": options.min_face, **({"drawn": str(drawer.folder)} if drawer else {}),
            "seconds": round(seconds, 2), "img_per_s": round(len(paths) / seconds, 1) if seconds > 0 else None}



TABLE_ROWS = 20


def faces_table(out: str | os.PathLike) -> str | None:
    """The rows of a small .csv output as an aligned text table (None for Parquet or over TABLE_ROWS rows)."""
    import csv

    if Path(out).suffix.lower() != ".csv":
        return None
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if len(rows) - 1 > TABLE_ROWS:
        return None
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def example_photo() -> Path:
    """The public-domain photo with a face that scikit-image ships (astronaut.png: Eileen Collins, NASA)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "astronaut.png" if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError("--example uses the photo scikit-image ships: pip install scikit-image (it comes "
                                'with the extra: pip install "genderfusion[faces]")')
    return path

"""Predicting any photos: one row per image (path, P(female), label, doubtful, error), streamed in batches with
bounded memory to a CSV or Parquet file (`predict --images`), or returned as a DataFrame (`predict_frame`)."""
from __future__ import annotations

import glob
import math
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from genderfusion.extract.atomic import atomic_path, check_output
from genderfusion.extract.errors import BadImageError

from .images import MAX_SIDE, as_items, decode_one

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
COLUMNS = ("path", "p_female", "label", "doubtful", "stage", "error")
TABLES = (".csv", ".parquet")


def printable(text: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (which Python keeps as surrogates) written as \\xNN."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate of another kind
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


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
        path = Path(text)
        if path.is_dir():
            found = _walk(path)
            if not found:
                raise FileNotFoundError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif path.is_file() and path.suffix.lower() == ".txt":
            out += _listed(path)
        elif path.is_file() or path.is_symlink():  # a broken link is kept, to be reported as one
            out.append(path)
        elif any(c in text for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"{text}: no file matches this pattern")
            out += found
        else:
            raise FileNotFoundError(f"{text}: no such file or folder")
    return out


def _rows(clf, items: Sequence, names: Sequence[str], band: tuple[float, float], skip_bad: bool,
          batch_size: int, device: str, cascade: bool = True) -> list[dict]:
    """One row per item, in order; an unreadable item is an error naming it, or (skip_bad) a row with the error."""
    arrays, rows = [], []
    for i, (item, name) in enumerate(zip(items, names)):
        try:
            arrays.append(decode_one(item, i, MAX_SIDE))
            rows.append({"path": name})
        except (BadImageError, FileNotFoundError, ValueError, TypeError) as exc:
            if not skip_bad:
                raise
            rows.append({"path": name, "p_female": math.nan, "label": -1, "doubtful": True, "stage": 0,
                         "error": str(exc)})
    d = clf.predict_details(arrays, batch_size=batch_size, device=device, band=band, cascade=cascade) if arrays \
        else None
    n = -1
    for row in rows:
        if "error" not in row:
            n += 1
            q = float(d["p_female"][n])
            row.update(p_female=q, label=int(q >= clf.threshold), doubtful=bool(d["doubtful"][n]),
                       stage=int(d["stage"][n]), error="")
    return rows


def predict_frame(clf, images, band: tuple[float, float] = (0.45, 0.55), skip_bad: bool = False,
                  batch_size: int = 256, device: str = "auto", cascade: bool = True):
    """A pandas DataFrame with the columns path, p_female, label, doubtful, stage, error: one row per image
    (paths, PIL images, arrays or tensors; an in-memory image's path is '<image i>')."""
    import pandas as pd

    items = as_items(images)
    names = [str(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>" for i, x in enumerate(items)]
    return pd.DataFrame(_rows(clf, items, names, band, skip_bad, batch_size, device, cascade), columns=list(COLUMNS))


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
            table = pa.Table.from_pylist(rows, schema=pa.schema([("path", pa.string()), ("p_female", pa.float64()),
                                                                 ("label", pa.int64()), ("doubtful", pa.bool_()),
                                                                 ("stage", pa.int64()), ("error", pa.string())]))
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.tmp, table.schema)
            self._pq.write_table(table)
            return
        import csv

        w = csv.writer(self._fh)
        for r in rows:
            w.writerow([printable(r["path"]), "" if math.isnan(r["p_female"]) else f"{r['p_female']:.6f}",
                        r["label"], int(r["doubtful"]), r["stage"], printable(r["error"])])

    def close(self) -> None:
        if self.parquet:
            if self._pq is not None:
                self._pq.close()
        else:
            self._fh.close()


def predict_images(clf, images: Sequence[str | os.PathLike], out: str | os.PathLike, batch_size: int = 256,
                   skip_bad: bool = False, band: tuple[float, float] = (0.45, 0.55), device: str = "auto",
                   progress: bool = True, cascade: bool = True) -> dict:
    """Predict every photo of `images` (folders, globs, lists, files) into `out` (.csv, or .parquet), batch by
    batch: memory holds one batch. Without skip_bad, the first unreadable file stops the run, naming it, and no
    output is left; with it, the file's row carries the error."""
    from tqdm.auto import tqdm

    paths = expand_paths(images)
    out = check_table(out, [*images, *paths])
    t0 = time.time()
    n_err = n_female = n_doubtful = 0
    with atomic_path(out) as tmp:
        writer = _Writer(Path(tmp), out.suffix.lower() == ".parquet")
        try:
            with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
                for chunk in _chunks(paths, batch_size):
                    rows = _rows(clf, chunk, [str(p) for p in chunk], band, skip_bad, batch_size, device, cascade)
                    writer.write(rows)
                    n_err += sum(bool(r["error"]) for r in rows)
                    n_female += sum(r["label"] == 1 for r in rows)
                    n_doubtful += sum(bool(r["doubtful"]) and not r["error"] for r in rows)
                    bar.update(len(chunk))
        finally:
            writer.close()
    seconds = time.time() - t0
    return {"out": str(out), "images": len(paths), "errors": n_err, "female": n_female, "doubtful": n_doubtful,
            "seconds": round(seconds, 2), "img_per_s": round(len(paths) / seconds, 1) if seconds > 0 else None}


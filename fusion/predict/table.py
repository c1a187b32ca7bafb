"""`predict --images` as a library call: every face of every photo, streamed in batches with bounded memory into a
CSV or Parquet file."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from genderfusion.files.atomic import atomic_path
from genderfusion.files.outputs import check_output
from genderfusion.files.paths import printable

from genderfusion.fusion.photos.drawing import Drawer
from genderfusion.fusion.photos.inputs import expand_paths
from genderfusion.fusion.predict.options import PhotoOptions
from genderfusion.fusion.photos.faces import NO_FACE
from genderfusion.fusion.predict.rows import COLUMNS, FRAME_TYPES, INTS, PhotoPredictor, csv_cells, is_face

TABLES = (".csv", ".parquet")
TABLE_ROWS = 20  # a run with at most this many rows keeps them for the table the CLI prints
COUNTS = ("images", "faces", "no_face", "unreadable", "female", "doubtful")


def check_table(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """The output table: a .csv or .parquet file, none of the inputs, in a folder that can be written."""
    return check_output(out, TABLES, inputs)


@dataclass(frozen=True)
class PhotoJob:
    """What one run reads and writes, checked before a model is loaded: the photo files (expanded once), the output
    table, and the drawn photos' folder (None: none drawn)."""
    paths: list[Path]
    out: Path
    drawer: Drawer | None = None

    @classmethod
    def plan(cls, images: Sequence[str | os.PathLike], out: str | os.PathLike, draw: str | os.PathLike | None = None,
             overwrite: bool = False) -> "PhotoJob":
        """images: folders, globs, .txt lists or files. draw: a folder that gets each photo with its faces' boxes,
        labels and P(female); it holds no input, and a file there is replaced only with overwrite."""
        paths = expand_paths(images)
        out = check_table(out, [*images, *paths])
        return cls(paths, out, None if draw is None else Drawer(draw, paths, overwrite))

    def shard(self, lo: int, hi: int, out: Path) -> "PhotoJob":
        """The photos lo..hi into another output (one rank's part), drawn as planned."""
        return dataclasses.replace(self, paths=self.paths[lo:hi], out=out)


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
            import csv

            self._fh = open(tmp, "w", encoding="utf-8", newline="")
            self._fh.write(",".join(COLUMNS) + "\n")
            self._csv = csv.writer(self._fh)

    def write(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not self.parquet:
            self._csv.writerows(csv_cells(r) for r in rows)
            return
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{**r, "path": printable(r["path"]), "error": printable(r["error"])} for r in rows]
        types = {"p_female": pa.float64(), "doubtful": pa.bool_(), **dict.fromkeys(INTS, pa.int64())}
        frame = pd.DataFrame(rows, columns=list(COLUMNS)).astype(FRAME_TYPES)  # nulls stay nulls, read back as NA
        table = pa.Table.from_pandas(frame, schema=pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS]),
                                     preserve_index=False)
        if self._pq is None:
            self._pq = pq.ParquetWriter(self.tmp, table.schema)
        self._pq.write_table(table)

    def close(self) -> None:
        if self.parquet:
            if self._pq is not None:
                self._pq.close()
        else:
            self._fh.close()


def _chunks(paths: list[Path], n: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), n):
        yield paths[start:start + n]


def predict_images(clf, job: PhotoJob, options: PhotoOptions | None = None, progress: bool = True) -> dict:
    """Predict every face of every photo of `job` into its output, batch by batch: memory holds one batch. A photo
    without a face is a row with rule `no face`. Without skip_bad, the first unreadable file stops the run, naming
    it, and no output is left; with it, the file's row carries the error and the run goes on. Returns the counts
    (images, faces, no_face: photos without a face, unreadable, female, doubtful); `rows` holds the rows when there
    are at most TABLE_ROWS."""
    from tqdm.auto import tqdm

    options = options or PhotoOptions()
    if job.drawer is not None:
        job.drawer.folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    counts, kept = dict.fromkeys(COUNTS, 0), []
    with atomic_path(job.out) as tmp, PhotoPredictor(clf, options) as predictor:
        writer = _Writer(Path(tmp), job.out.suffix.lower() == ".parquet")
        try:
            with tqdm(total=len(job.paths), desc="predict", unit="img", disable=not progress) as bar:
                for chunk in _chunks(job.paths, options.batch_size):
                    rows = predictor.rows(chunk, [str(p) for p in chunk], job.drawer)
                    writer.write(rows)
                    faces = [r for r in rows if is_face(r)]
                    counts["images"] += len(chunk)
                    counts["faces"] += len(faces)
                    counts["no_face"] += sum(r["rule"] == NO_FACE for r in rows)
                    counts["unreadable"] += sum(bool(r["error"]) for r in rows)
                    counts["female"] += sum(r["label"] == 1 for r in faces)
                    counts["doubtful"] += sum(bool(r["doubtful"]) for r in faces)
                    kept = (kept + rows)[:TABLE_ROWS + 1]
                    bar.update(len(chunk))
        finally:
            writer.close()
    seconds = time.time() - t0
    return {"out": str(job.out), **counts, "faces_mode": options.faces, "detector": options.detector,
            "min_face": options.min_face, **({"drawn": str(job.drawer.folder)} if job.drawer else {}),
            "seconds": round(seconds, 2), "img_per_s": round(len(job.paths) / seconds, 1) if seconds > 0 else None,
            "rows": kept if len(kept) <= TABLE_ROWS else None}


def faces_table(rows: list[dict]) -> str:
    """Rows as an aligned text table with the CSV output's header and cells."""
    cells = [list(COLUMNS), *(csv_cells(r) for r in rows)]
    widths = [max(len(r[c]) for r in cells) for c in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)

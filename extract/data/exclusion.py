"""Ids to leave out of training (`--exclude FILE`): read, checked against the training rows, turned into a mask."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from genderfusion.option_errors import option_error

from ..errors import DataError


def read_ids(path: str | os.PathLike) -> list[str]:
    """Ids from a CSV with an `id` column (audit-labels' suspects.csv) or a text file of one id per line."""
    path = Path(path)
    if not path.exists():
        raise option_error(DataError, "exclude", f"{path}: no such file", "exclude file")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if lines and "," in lines[0]:
        rows = list(csv.DictReader(lines))
        if "id" not in (rows[0].keys() if rows else lines[0].split(",")):
            raise option_error(DataError, "exclude", f"{path}: a CSV needs an `id` column; its columns are "
                                                     f"{lines[0]!r}", "exclude file")
        return [r["id"].strip() for r in rows]
    return lines[1:] if lines and lines[0] == "id" else lines


def exclusion_mask(ids: list[str] | np.ndarray, labels: np.ndarray, excluded: list[str], source: str) -> np.ndarray:
    """True for each training row to leave out; an unknown id, or leaving a class without rows, is an error."""
    ids = [str(i) for i in ids]
    known = set(ids)
    unknown = [i for i in dict.fromkeys(excluded) if i not in known]
    if unknown:
        raise DataError(f"{source}: {len(unknown)} id(s) are not training rows, e.g. {unknown[:5]}; nothing trained")
    mask = np.isin(np.array(ids, dtype=object), np.array(list(set(excluded)), dtype=object))
    for c in (0, 1):
        if not (~mask & (labels == c)).any():
            raise DataError(f"{source} would exclude every training row of class {c}; nothing trained")
    return mask

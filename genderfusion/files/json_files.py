"""Reading JSON: the project's own files (read_json), and JSON from outside (a request body, a model file's header)
parsed within bounds (loads): its size and nesting depth are checked before the parser sees it, so that deep
nesting cannot exhaust the stack (RecursionError)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

MAX_DEPTH = 64  # a model's structure nests about 8 deep, a request 3
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def depth(raw: bytes) -> int:
    """The deepest nesting of [ and { outside strings."""
    bare = np.frombuffer(_STRINGS.sub(b'""', raw), dtype=np.uint8)
    step = (np.isin(bare, (ord("["), ord("{"))).astype(np.int64) - np.isin(bare, (ord("]"), ord("}"))))
    return int(np.cumsum(step).max(initial=0))


def loads(raw: bytes | str, what: str, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads of `raw`, refused (ValueError naming `what`) when over max_bytes, nested deeper than max_depth,
    or not valid JSON."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise ValueError(f"{what} is {len(data)} bytes of JSON, above the bound of {max_bytes}")
    deep = depth(data)
    if deep > max_depth:
        raise ValueError(f"{what} is JSON nested {deep} deep, above the bound of {max_depth}")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON ({' '.join(str(exc).split())})") from None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; one that is not valid JSON is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON file ({exc}); restore it or remove it to start afresh") from None

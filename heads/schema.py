"""Types and ranges of a saved estimator's JSON fields, checked before anything is built from them: a field that
is missing, of the wrong type or out of range is a StateError naming it (`heads_.0.params.hidden: -1, below 1`)."""
from __future__ import annotations

import math
from typing import Any, Callable

Spec = Callable[[Any, str], None]
MAX_FEATURES = 1 << 20  # features of one row: far above any source's (FaceRes pooling: 1,024)
MAX_ITEMS = 1 << 16  # entries of a list of parameters (candidate ks, block widths, history)


class SchemaError(ValueError):
    """A JSON field that does not fit its schema; the message names the field."""


def _fail(where: str, value, why: str) -> None:
    text = repr(value)
    raise SchemaError(f"{where}: {text[:60] + '...' if len(text) > 60 else text}, {why}")


def integer(lo: int, hi: int) -> Spec:
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(where, v, "not a whole number")
        if not lo <= v <= hi:
            _fail(where, v, f"outside {lo}..{hi}")
    return check


def number(lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False, open_hi: bool = False) -> Spec:
    def check(v, where):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            _fail(where, v, "not a finite number")
        if v < lo or v > hi or (open_lo and v == lo) or (open_hi and v == hi):
            _fail(where, v, f"outside {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}")
    return check


def text(choices: tuple[str, ...] | None = None, max_len: int = 4096) -> Spec:
    def check(v, where):
        if not isinstance(v, str) or len(v) > max_len:
            _fail(where, v, f"not a string of at most {max_len} characters")
        if choices is not None and v not in choices:
            _fail(where, v, f"not one of {', '.join(choices)}")
    return check


def boolean(v, where) -> None:
    if not isinstance(v, bool):
        _fail(where, v, "not true or false")


def anything(v, where) -> None:
    """Kept as it is (a training history, a report): never used to build anything."""


def items(item: Spec, min_len: int = 0, max_len: int = MAX_ITEMS) -> Spec:
    def check(v, where):
        if not isinstance(v, list) or not min_len <= len(v) <= max_len:
            _fail(where, v, f"not a list of {min_len} to {max_len} entries")
        for i, x in enumerate(v):
            item(x, f"{where}.{i}")
    return check


def optional(spec: Spec) -> Spec:
    def check(v, where):
        if v is not None:
            spec(v, where)
    return check


def mapping(fields: dict[str, Spec], required: tuple[str, ...] | None = None) -> Spec:
    """A JSON object whose listed fields fit their specs; `required` (default: every listed field) must be there.
    Other keys are allowed."""
    need = tuple(fields) if required is None else required

    def check(v, where):
        if not isinstance(v, dict):
            _fail(where, v, "not an object")
        for name, spec in fields.items():
            if name in v:
                spec(v[name], f"{where}.{name}" if where else name)
            elif name in need:
                raise SchemaError(f"{where + '.' if where else ''}{name}: missing")
    return check


def band_spec(v, where) -> None:
    """[lo, hi] with 0 <= lo <= hi <= 1."""
    items(number(0, 1), 2, 2)(v, where)
    if v[0] > v[1]:
        _fail(where, v, "a reversed band (lo above hi)")


# shared parameters of the heads
FEATURES = integer(1, MAX_FEATURES)
BLOCKS = optional(items(FEATURES, 1, 4096))
SEED = integer(0, 2**32 - 1)
SCALING = {"blocks": BLOCKS, "pca": optional(FEATURES), "balance": boolean, "random_state": SEED}

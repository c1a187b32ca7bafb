"""Fitted estimators as data: `to_state()` gives a JSON-able dict and named numpy arrays, `from_state()` builds the
estimator back from them, the way a torch module has `state_dict()` / `load_state_dict()`. Nothing is pickled:
a state names its class, and loading accepts only the classes each field allows."""
from __future__ import annotations

import inspect
import os
from typing import Mapping, Sequence

import numpy as np

from .schema import SchemaError, Spec, mapping

State = tuple[dict, dict[str, np.ndarray]]


class StateError(ValueError):
    """A state that misses a field or an array, names a class its field does not allow, or holds a wrong value."""


def _within(where: str, build):
    """build(), its errors named by the field they come from (`heads_.0.` + `params.hidden: ...`)."""
    try:
        return build()
    except (StateError, SchemaError) as exc:
        raise StateError(f"{where}.{exc}") from None


def params_of(est) -> dict:
    """The constructor parameters of `est` (tuples as lists, for JSON)."""
    return {n: to_json(getattr(est, n)) for n in _param_names(type(est))}


def _param_names(cls: type) -> list[str]:
    if cls.__init__ is object.__init__:
        return []
    return [n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def to_json(value):
    """Tuples as lists, numpy scalars and arrays as Python numbers and lists, paths as strings, recursively."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def with_params(cls: type, params: dict):
    """cls(**params), where a parameter whose default is a tuple gets its list back as a tuple."""
    if not isinstance(params, dict):
        raise StateError(f"{cls.__name__}: parameters are not a mapping")
    names = _param_names(cls)
    sig = inspect.signature(cls.__init__).parameters if names else {}
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise StateError(f"{cls.__name__}: unknown parameter(s) {unknown}")
    kw = {k: tuple(v) if isinstance(sig[k].default, tuple) and isinstance(v, list) else v for k, v in params.items()}
    return cls(**kw)


class Arrays:
    """Named arrays under a prefix ('scaler.mean_' is `mean_` of the view `sub('scaler')`)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], prefix: str = ""):
        self._arrays, self._prefix = arrays, prefix

    def __getitem__(self, name: str) -> np.ndarray:
        key = self._prefix + name
        if key not in self._arrays:
            raise StateError(f"array {key!r} is missing")
        return self._arrays[key]

    def __contains__(self, name: str) -> bool:
        return self._prefix + name in self._arrays

    def sub(self, name: str) -> "Arrays":
        return Arrays(self._arrays, f"{self._prefix}{name}.")


def nest(name: str, state: State, arrays: dict[str, np.ndarray]) -> dict:
    """Put a child's arrays under `name.` in `arrays`; returns the child's dict."""
    meta, own = state
    arrays.update({f"{name}.{k}": v for k, v in own.items()})
    return meta


def field(meta: dict, name: str):
    if not isinstance(meta, dict) or name not in meta:
        raise StateError(f"field {name!r} is missing")
    return meta[name]


def child_from_state(meta: dict, arrays: Arrays, allowed: Sequence[type]):
    """The object a child state describes; its class must be one of `allowed` (matched by name)."""
    kind = field(meta, "type")
    by_name = {c.__name__: c for c in allowed}
    if kind not in by_name:
        raise StateError(f"class {kind!r} is not allowed here (allowed: {sorted(by_name)})")
    return by_name[kind].from_state(meta, arrays)


class Stateful:
    """to_state / from_state from declarations: `_state_json` (fitted attributes kept in the dict), `_state_arrays`
    (fitted numpy attributes), `_state_children` (attribute -> allowed classes: a fitted estimator, a list of them, or
    None). `_state_optional` names attributes that may be absent. `_params` and `_fields` give the schema
    (heads.schema) of the constructor parameters and of the `_state_json` fields, checked before anything is built.
    Classes with more to save extend `_extra_state` and `_restore`."""

    _params: dict[str, Spec] = {}
    _fields: dict[str, Spec] = {}
    _state_json: tuple[str, ...] = ()
    _state_arrays: tuple[str, ...] = ()
    _state_children: dict[str, tuple[type, ...]] = {}
    _state_optional: tuple[str, ...] = ()

    def to_state(self) -> State:
        meta: dict = {"type": type(self).__name__, "params": params_of(self)}
        arrays: dict[str, np.ndarray] = {}
        for name in self._state_json + self._state_arrays:
            if not hasattr(self, name):
                if name in self._state_optional:
                    continue
                raise StateError(f"{type(self).__name__} is not fitted ({name} is missing)")
            value = getattr(self, name)
            if name in self._state_json:
                meta[name] = to_json(value)
            else:
                arrays[name] = value
        for name in self._state_children:
            value = getattr(self, name)
            if value is None or isinstance(value, list):
                meta[name] = None if value is None else [nest(f"{name}.{i}", v.to_state(), arrays)
                                                         for i, v in enumerate(value)]
            else:
                meta[name] = nest(name, value.to_state(), arrays)
        extra_meta, extra_arrays = self._extra_state()
        meta.update(extra_meta)
        arrays.update(extra_arrays)
        return meta, {k: np.ascontiguousarray(v) for k, v in arrays.items()}  # safetensors writes C order

    def _extra_state(self) -> State:
        return {}, {}

    @classmethod
    def from_state(cls, meta: dict, arrays: Mapping[str, np.ndarray] | Arrays):
        arrays = arrays if isinstance(arrays, Arrays) else Arrays(arrays)
        if field(meta, "type") != cls.__name__:
            raise StateError(f"a {meta['type']!r} state given to {cls.__name__}")
        try:
            mapping({"params": mapping(cls._params, required=()), **cls._fields},
                    required=("params", *(n for n in cls._fields if n not in cls._state_optional)))(meta, "")
        except SchemaError as exc:
            raise StateError(str(exc)) from None
        obj = with_params(cls, field(meta, "params"))
        for name in cls._state_json + cls._state_arrays:
            source = meta if name in cls._state_json else arrays
            if name in source:
                setattr(obj, name, source[name])
            elif name not in cls._state_optional:
                raise StateError(f"{cls.__name__}: {name!r} is missing")
        for name, allowed in cls._state_children.items():
            value = field(meta, name)
            if isinstance(value, list):
                value = [_within(f"{name}.{i}", lambda: child_from_state(v, arrays.sub(f"{name}.{i}"), allowed))
                         for i, v in enumerate(value)]
            elif value is not None:
                value = _within(name, lambda: child_from_state(value, arrays.sub(name), allowed))
            setattr(obj, name, value)
        obj._restore(meta, arrays)
        return obj

    def _restore(self, meta: dict, arrays: Arrays) -> None:
        """Rebuild what is derived from the saved state (a fitted scikit-learn model, a torch net, a faiss index)."""

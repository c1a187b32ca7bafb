"""The saved fusion model: one safetensors file. Its header's metadata holds the model's structure as JSON (format,
package version, sources and recipes, protocol, heads and their hyperparameters, threshold, bands, cascade, second
stage, training ids) and a sha256 of it all; its tensors are every array the model fitted (coefficients, scalers,
MLP weights, kNN vectors, training labels).

Loading reads data only: it never unpickles, evaluates or imports anything named in the file, and builds each
estimator from the classes its field allows (`heads.state`). A pickle of an earlier version is refused unread.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from genderfusion.files.atomic import atomic_path
from genderfusion.files.json_files import loads
from genderfusion.files.paths import special_kind

FORMAT = "genderfusion-model-v3"
FILE_NAME = "model.safetensors"  # in <workdir>/heads/<name>/
LEGACY_NAME = "model.pkl"
MAX_HEADER = 100 * 2**20  # safetensors' own bound on its JSON header
MAX_BYTES = 2**31  # a model file (or a .gfm entry) beyond this is refused before it is read


class ModelFileError(ValueError):
    """A file that is not a readable fusion model; the message names the file and what is wrong, in one line."""


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def legacy_error(path: Path | str, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: made by genderfusion 0.1.0 or earlier with a format that could run code "
                          f"({what}); it is not read: retrain the model with train-head, or re-export it with "
                          "export-model from its workspace with this version")


def _digest(model_json: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(model_json.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


DTYPES = {"f8": "F64", "f4": "F32", "f2": "F16", "i8": "I64", "i4": "I32", "i2": "I16", "i1": "I8", "u8": "U64",
          "u4": "U32", "u2": "U16", "u1": "U8", "b1": "BOOL"}


def _safetensors(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The safetensors serialisation of `arrays`, tensors and header keys in sorted order: the same model gives the
    same bytes (the safetensors library writes its metadata in hash order)."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset, blobs = 0, []
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": DTYPES[a.dtype.str[1:]], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def dumps(clf) -> bytes:
    """A fitted FusionClassifier as the bytes of a model file."""
    from genderfusion import __version__

    meta, arrays = clf.to_state()
    model_json = json.dumps(meta, sort_keys=True)
    return _safetensors(arrays, {"format": FORMAT, "genderfusion": __version__, "model": model_json,
                                 "sha256": _digest(model_json, arrays)})


def save(clf, path: str | Path) -> Path:
    path = Path(path)
    data = dumps(clf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def is_pickle(data: bytes) -> bool:
    """Whether bytes begin like a pickle of protocol 2 to 5."""
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def _header(data: bytes, name: str) -> dict:
    """The metadata of a safetensors file's header (checked to be ours, of this format)."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if 2 <= n <= MAX_HEADER and data[8:9] == b"{" and len(data) < 8 + n:
        raise ModelFileError(f"{name}: damaged model file (truncated: {len(data)} bytes, less than its header's "
                             f"{8 + n}); retrain or export it again")
    if not 2 <= n <= MAX_HEADER or data[8:9] != b"{":
        if is_pickle(data):
            raise legacy_error(name, "a pickle")
        raise ModelFileError(f"{name}: not a genderfusion model file (no safetensors header; truncated, or another "
                             "kind of file)")
    try:
        meta = loads(data[8:8 + n], "its header", MAX_HEADER)["__metadata__"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{name}: not a genderfusion model file (its header: {one_line(exc)})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != FORMAT:
        raise ModelFileError(f"{name}: a model file of format {fmt!r} (genderfusion "
                             f"{meta.get('genderfusion') if isinstance(meta, dict) else '?'}); this version reads "
                             f"{FORMAT}: retrain it with train-head or export it again")
    return meta


def read_file(path: Path) -> bytes:
    """A model file's bytes, refused unread when it is not a regular file or is beyond MAX_BYTES (and never read
    past that bound, whatever its size said)."""
    kind = special_kind(path)
    if kind is not None:
        raise ModelFileError(f"{path}: {kind}, not a model file; not read")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ModelFileError(f"{path}: {size} bytes, beyond the bound of {MAX_BYTES} for a model file; not read")
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ModelFileError(f"{path}: more than {MAX_BYTES} bytes, beyond the bound for a model file")
    return data


def check_finite(arrays: dict[str, np.ndarray], name: str | Path) -> None:
    """Every number of every tensor finite: a NaN or infinite weight would give NaN or constant predictions."""
    for key in sorted(arrays):
        a = arrays[key]
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ModelFileError(f"{name}: the tensor {key} holds {int((~np.isfinite(a)).sum())} NaN or infinite "
                                 "value(s); not a usable model (a broken training run, or an altered file)")


def read_state(data: bytes, name: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The state (JSON structure, named arrays) a model file's bytes hold, after checking its format and sha256
    (`name` for messages); FusionClassifier.from_state builds the model from it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    meta = _header(data, name)
    try:
        arrays = load(data)
    except SafetensorError as exc:
        raise ModelFileError(f"{name}: damaged model file ({one_line(exc)}); retrain or export it again") from None
    model_json = meta.get("model")
    if not isinstance(model_json, str) or meta.get("sha256") != _digest(model_json, arrays):
        raise ModelFileError(f"{name}: damaged model file (its sha256 does not match its contents); retrain or "
                             "export it again")
    check_finite(arrays, name)
    try:
        return loads(model_json, "its model structure", MAX_HEADER), arrays
    except ValueError as exc:
        raise ModelFileError(f"{name}: not a valid fusion model ({exc})") from None

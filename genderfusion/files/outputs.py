"""An output file checked before any work: its suffix, that it is not an input, that its folder can be written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable


def _refused(kind: type, out: Path, why: str) -> Exception:
    """An error about the output file: `option` and `detail` let a CLI name it by its flag."""
    exc = kind(f"output {out}{why}")
    exc.option, exc.detail = "out", f"{out}{why}"
    return exc


def check_output(out: str | os.PathLike, suffixes: tuple[str, ...], inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an output file whose suffix is not one of `suffixes`, that is one of the `inputs`,
    or whose folder does not exist or cannot be written."""
    out = Path(out)
    if out.suffix.lower() not in suffixes:
        raise _refused(ValueError, out, f": write a {' or '.join(suffixes)} file (the suffix says which)")
    real = os.path.realpath(out)
    if any(os.path.realpath(p) == real for p in inputs):
        raise _refused(ValueError, out, " is one of the inputs; name another file")
    folder = out.parent
    if not folder.is_dir():
        raise _refused(FileNotFoundError, out, f": the folder {folder} does not exist")
    if out.is_dir():
        raise _refused(IsADirectoryError, out, ": a folder; name a file")
    try:  # the rename that finishes the real write needs a file created in that folder
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise _refused(PermissionError, out, f": cannot write in {folder} ({exc.strerror})") from None
    return out

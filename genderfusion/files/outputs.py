"""An output file checked before any work: its suffix, that it is not an input, that its folder can be written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from genderfusion.option_errors import option_error


def check_output(out: str | os.PathLike, suffixes: tuple[str, ...], inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an output file whose suffix is not one of `suffixes`, that is one of the `inputs`,
    or whose folder does not exist or cannot be written."""
    out = Path(out)
    if out.suffix.lower() not in suffixes:
        raise option_error(ValueError, "out", f"{out}: write a {' or '.join(suffixes)} file (the suffix says which)",
                           "output")
    real = os.path.realpath(out)
    if any(os.path.realpath(p) == real for p in inputs):
        raise option_error(ValueError, "out", f"{out} is one of the inputs; name another file", "output")
    folder = out.parent
    if not folder.is_dir():
        raise option_error(FileNotFoundError, "out", f"{out}: the folder {folder} does not exist",
                           "output")
    if out.is_dir():
        raise option_error(IsADirectoryError, "out", f"{out}: a folder; name a file", "output")
    try:  # the rename that finishes the real write needs a file created in that folder
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise option_error(PermissionError, "out", f"{out}: cannot write in {folder} ({exc.strerror})",
                           "output") from None
    return out

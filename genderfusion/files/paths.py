"""What a path names, told before it is opened: reading a FIFO blocks and a device never ends."""
from __future__ import annotations

import os
import stat
from pathlib import Path

KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def special_kind(path: str | os.PathLike) -> str | None:
    """What `path` (links followed) is when it exists but is not a regular file ("a named pipe (FIFO)", "a
    folder" ...); None for a regular file or a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # a link loop, a name too long
        return f"unreadable ({exc.strerror})"
    return next((name for test, name in KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def printable(text: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (which Python keeps as surrogates) written as \\xNN."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate of another kind
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` lies in `folder` or below it (real paths: links resolved)."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return real == top or top in real.parents

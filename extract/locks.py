"""An exclusive lock on a workspace file, released by the OS when its holder dies."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import WorkspaceError


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (released by the OS even if the process is killed); refuse if another
    process holds it."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise WorkspaceError(f"{what} is being written by another process ({fh.read().strip() or 'unknown'}, "
                                 f"lock {path}); wait for it to finish, then rerun") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

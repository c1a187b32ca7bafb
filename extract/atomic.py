"""Atomic file writes: write to a temporary file in the same folder, then rename."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files and folders of `path` left by a killed writer (`.<name>.<pid>.*.tmp` whose
    process is gone); return them."""
    import shutil

    gone = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def _allow_group_and_others(path: str | os.PathLike, mode: int) -> None:
    """mkstemp and mkdtemp make private files and folders; give workspace files the mode the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _prefix(path: Path) -> str:
    """Temporary names carry the writer's pid, so that a later writer can tell a dead writer's leftovers."""
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed (and the
    leftovers of writers killed before are removed first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    _allow_group_and_others(tmp, 0o666)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder next to `path`; on success it takes the place of `path` as a whole (the old
    folder, if any, is removed after the swap), on error it is removed and `path` is untouched."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    _allow_group_and_others(tmp, 0o777)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f"{_prefix(path)}old.tmp")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (released by the OS even if the process is killed); refuse if another
    process holds it."""
    import fcntl

    from .errors import WorkspaceError

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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; one that is not valid JSON is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON file ({exc}); restore it or remove it to start afresh") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output(out: str | os.PathLike, suffixes: tuple[str, ...], inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an output file whose suffix is not one of `suffixes`, that is one of the `inputs`,
    or whose folder does not exist or cannot be written."""
    out = Path(out)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"--out {out}: write a {' or '.join(suffixes)} file (the suffix says which)")
    real = os.path.realpath(out)
    if any(os.path.realpath(p) == real for p in inputs):
        raise ValueError(f"--out {out} is one of the inputs; name another file")
    folder = out.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {folder} does not exist")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out}: a folder; name a file")
    try:  # the rename that finishes the real write needs a file created in that folder
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise PermissionError(f"--out {out}: cannot write in {folder} ({exc.strerror})") from None
    return out

"""The photo files a run reads: folders (recursively), glob patterns, .txt lists of paths, files; and the example
photo."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from genderfusion.files.paths import special_kind

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def walk(folder: Path) -> list[Path]:
    """Image files under a folder, sorted, following symbolic links to files and folders (each real folder once:
    a link cycle ends); a broken link with an image suffix is kept, so that it is reported, not dropped."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(root) / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _listed(path: Path) -> list[Path]:
    """The paths a .txt list names, one a line (relative to the list's folder); an unreadable or empty list is an
    error naming it."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file of image paths ({exc.reason} at byte {exc.start}); "
                         "save it as UTF-8") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise FileNotFoundError(f"{path}: lists no image paths")
    return [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines]


def expand_paths(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files from folders (recursively, by suffix, sorted, symbolic links followed), glob patterns, text
    files listing one path a line (.txt), or image files; a path that does not exist, a glob without a match, an
    empty folder or an empty list is an error naming it."""
    out: list[Path] = []
    for item in items:
        text = str(item)
        if not text.strip():
            raise ValueError(f"{text!r}: an empty path; name a photo, a folder, a glob or a .txt list")
        path = Path(text)
        kind = special_kind(path)
        if kind not in (None, "a folder") and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{text}: {kind}, not an image file or a folder; not read")
        if path.is_dir():
            found = walk(path)
            if not found:
                raise FileNotFoundError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif path.is_file() and path.suffix.lower() == ".txt":
            out += _listed(path)
        elif path.is_file() or path.is_symlink() or kind:  # a broken link or a FIFO is kept, to be reported
            out.append(path)
        elif any(c in text for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"{text}: no file matches this pattern")
            out += found
        else:
            raise FileNotFoundError(f"{text}: no such file or folder")
    return out


def example_photo() -> Path:
    """The public-domain photo with a face that scikit-image ships (astronaut.png: Eileen Collins, NASA)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "astronaut.png" if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError("the example photo is the one scikit-image ships: pip install scikit-image (it "
                                'comes with the extra: pip install "genderfusion[faces]")')
    return path

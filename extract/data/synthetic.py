"""A small generated competition folder (synthetic, not faces) for demos and tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MARKER = ".make-synthetic"  # the files make-synthetic wrote in its folder, one a line


def _own_files(out: Path, overwrite: bool) -> set[str]:
    """The files of an earlier make-synthetic run in `out` (which is refused unless it is new, empty, or - with
    overwrite - holds nothing else)."""
    if not out.exists():
        return set()
    if not out.is_dir():
        raise FileExistsError(f"{out}: a file, not a folder")
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MARKER}
    if not present:
        return set()
    if not overwrite:
        raise FileExistsError(f"{out}: not empty ({len(present)} files, e.g. {sorted(present)[0]}); make-synthetic "
                              "writes into a new or empty folder, or with overwrite=True over a folder it wrote itself")
    own = set((out / MARKER).read_text().split()) if (out / MARKER).is_file() else set()
    foreign = sorted(present - own)
    if foreign:
        raise FileExistsError(f"{out}: holds {len(foreign)} file(s) make-synthetic did not write (e.g. {foreign[0]}); "
                              "overwrite=True replaces only its own files: choose another folder")
    return own


def make_synthetic(out: str | Path, n_train: int = 400, n_test: int = 100, size: int = 64, seed: int = 0,
                   overwrite: bool = False) -> Path:
    """Write train.csv, test.csv, train_meta.csv, sampleSubmit.csv and JPEGs of blobs into a new or empty folder
    (overwrite: or one that make-synthetic wrote, whose own files are replaced and nothing else touched).

    Class 1 images hold a bright ellipse, class 0 a dark rectangle, on noisy backgrounds with
    random colours, positions and sizes, so a small CNN can learn it but not trivially.
    """
    if n_train < 2 or n_test < 0 or size < 8:
        raise ValueError(f"make_synthetic: n_train {n_train} (>= 2), n_test {n_test} (>= 0), size {size} (>= 8)")
    out = Path(out)
    before = _own_files(out, overwrite)
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    for split, n, first in (("train", n_train, 100000), ("test", n_test, 200000)):
        for j in range(n):
            label = int(rng.integers(2))
            bg = rng.integers(60, 190, size=3)
            arr = np.clip(bg + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
            d = ImageDraw.Draw(im)
            r = rng.integers(size // 6, size // 3)
            cx, cy = rng.integers(r, size - r, size=2)
            shade = tuple(int(v) for v in (rng.integers(150, 256, 3) if label else rng.integers(0, 110, 3)))
            box = [int(cx - r), int(cy - r * 0.8), int(cx + r), int(cy + r * 0.8)]
            (d.ellipse if label else d.rectangle)(box, fill=shade)
            im.save(out / split / f"{first + j}.jpg", quality=90)
            rows[split].append((first + j, label, int(rng.integers(1, 90)), int(rng.integers(0, 5))))
    (out / "train.csv").write_text("id,label\n" + "".join(f"{i},{y}\n" for i, y, _, _ in rows["train"]))
    (out / "train_meta.csv").write_text("id,age,race\n" + "".join(f"{i},{a},{r}\n" for i, _, a, r in rows["train"]))
    (out / "test.csv").write_text("id\n" + "".join(f"{i}\n" for i, _, _, _ in rows["test"]))
    (out / "sampleSubmit.csv").write_text("id,label\n" + "".join(f"{i},0\n" for i, _, _, _ in rows["test"]))
    written = {"train.csv", "train_meta.csv", "test.csv", "sampleSubmit.csv",
               *(f"{split}/{i}.jpg" for split in rows for i, *_ in rows[split])}
    for stale in sorted(before - written):  # an earlier, larger run's own images
        (out / stale).unlink(missing_ok=True)
    (out / MARKER).write_text("".join(f"{name}\n" for name in sorted(written)))
    return out

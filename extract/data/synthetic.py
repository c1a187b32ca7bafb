"""A small generated competition folder (synthetic, not faces) for demos and tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_synthetic(out: str | Path, n_train: int = 400, n_test: int = 100, size: int = 64, seed: int = 0) -> Path:
    """Write train.csv, test.csv, train_meta.csv, sampleSubmit.csv and JPEGs of blobs.

    Class 1 images hold a bright ellipse, class 0 a dark rectangle, on noisy backgrounds with
    random colours, positions and sizes, so a small CNN can learn it but not trivially.
    """
    out = Path(out)
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
    return out

"""A contact sheet: image tiles in a grid, each with caption lines, saved as one PNG."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from genderfusion.files.atomic import atomic_path

LINE = 12  # pixels per caption line of PIL's default font


def contact_sheet(paths: Sequence[str | os.PathLike], captions: Sequence[Sequence[str]], out: str | os.PathLike,
                  tile: int = 128, columns: int = 8) -> Path:
    """One tile per image (an unreadable one is grey), its caption lines below it."""
    from PIL import Image, ImageDraw

    n_lines = max((len(c) for c in captions), default=0)
    cell_h = tile + LINE * n_lines + 4
    rows = max(1, -(-len(paths) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (path, lines) in enumerate(zip(paths, captions)):
        x, y = (n % columns) * tile, (n // columns) * cell_h
        try:
            with Image.open(path) as im:
                sheet.paste(im.convert("RGB").resize((tile, tile)), (x, y))
        except OSError:
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=(128, 128, 128))
        for i, text in enumerate(lines):
            draw.text((x + 2, y + tile + 1 + LINE * i), text, fill="black")
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out

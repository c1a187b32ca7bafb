"""Output shared by the benchmark scripts."""
from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, json_path: str | None) -> dict:
    """Print a result as JSON, and also write it to json_path when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    return result

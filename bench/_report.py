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


def write_tables(result: dict, json_path: str | Path, markdown) -> dict:
    """Write a result to json_path and its tables, markdown(result), beside it (.md); print the tables."""
    json_path = Path(json_path)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    tables = markdown(result)
    json_path.with_suffix(".md").write_text(tables)
    print(tables)
    return result

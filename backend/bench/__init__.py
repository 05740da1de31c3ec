"""`animate4d bench ...`: measurements that belong in docs/BENCHMARKS.md, never in tests."""

from __future__ import annotations

import json
from pathlib import Path


def report(result: dict, json_path: str | None) -> int:
    """Print the figures as JSON (and write them to `json_path` when given)."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    return 0

"""Shared by the benchmarks: repeated measurement, medians, results on disk."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

OUT = Path("out/bench")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def save(name: str, result: dict) -> Path:
    """Writes `result` (with the machine's description) to out/bench/<name>.json."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    result = {"benchmark": name, "machine": platform.platform(),
              "processor": platform.processor() or platform.machine(), **result}
    path.write_text(json.dumps(result, indent=2))
    return path

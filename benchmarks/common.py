"""Shared by the benchmarks: repeated measurement, medians and spread, results on disk.

Results are written into the repository (benchmarks/results/<name>.json), not into the ignored
out/, so that docs/benchmarks.md is generated from measurements anyone can see and re-run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(name: str, values: list[float]) -> dict:
    """`name`_median, `name`_min and `name`_max of `values`: one run's figure is a median, and
    the range says how far to trust it on a shared machine."""
    return {f"{name}_median": median(values), f"{name}_min": float(min(values)),
            f"{name}_max": float(max(values))}


def machine() -> dict:
    """What the figures were measured on: they mean little without it."""
    import psutil

    return {"platform": platform.platform(), "processor": platform.processor()
            or platform.machine(), "cpu_count": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            # 1, 5 and 15 minutes: other work on the machine slows every figure down
            "load_average_when_saved": [round(x, 2) for x in os.getloadavg()]}


def command(name: str) -> str:
    return f"python -m benchmarks {name}"


def save(name: str, result: dict) -> Path:
    """Writes `result` to benchmarks/results/<name>.json with the command that regenerates it,
    the date and the machine; docs/benchmarks.md is rendered from these files."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    now = datetime.now(UTC)
    result = {"benchmark": name, "command": command(name),
              "date": now.isoformat(timespec="seconds"),
              "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def record_wall_time(name: str, seconds: float) -> None:
    """Adds the whole benchmark's wall time to its results: what a re-run will cost."""
    path = RESULTS / f"{name}.json"
    result = json.loads(path.read_text())
    result["wall_seconds"] = round(seconds, 1)
    path.write_text(json.dumps(result, indent=2) + "\n")


def time_generation(runner, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    """Prefill and decode tokens/s of `runner` (median, min, max over `repeats` runs after one
    warm-up run), keyed `prefill_tokens_per_second_median` etc."""
    import numpy as np

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        logits = runner.prefill(prompt)
        prefill = time.perf_counter() - start
        token = int(np.argmax(logits))
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(np.argmax(runner.decode(token)))
        return prefill, time.perf_counter() - start

    once()
    timings = [once() for _ in range(repeats)]
    return {**spread("prefill_tokens_per_second", [len(prompt) / p for p, _ in timings]),
            **spread("decode_tokens_per_second", [new_tokens / d for _, d in timings])}

"""Shared by the benchmarks: repeated measurement, medians, results on disk."""

from __future__ import annotations

import json
import platform
import statistics
import time
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


def time_generation(runner, prompt: list[int], new_tokens: int,
                    repeats: int) -> tuple[float, float]:
    """Median (prefill tokens/s, decode tokens/s) of `runner`, after one warm-up run."""
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
    return (median([len(prompt) / p for p, _ in timings]),
            median([new_tokens / d for _, d in timings]))

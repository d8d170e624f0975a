"""Exporting gemma3-270m to StableHLO: wall time and peak RSS, each run in a fresh process
(checkpoint load included, validation excluded), medians over the runs."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from benchmarks.common import median, save, spread

CHILD = r"""
import json, resource, sys, time
import psutil
from exporter import export
from model_zoo.checkpoints.default import default_checkpoint
from model_zoo.loading import load
default_checkpoint("gemma3-270m")  # assembled and hashed before the clock starts
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
model = load("gemma3-270m")
loaded = time.perf_counter()
manifest = export(model, sys.argv[1], force=True)
done = time.perf_counter()
print(json.dumps({"load_seconds": loaded - start, "export_seconds": done - loaded,
                  "total_seconds": done - start, "baseline": baseline,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run(repeats: int = 3) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(repeats):
            done = subprocess.run([sys.executable, "-c", CHILD, f"{scratch}/{index}"],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {
        "preset": "gemma3-270m",
        "format": "stablehlo",
        "repeats": repeats,
        "load_seconds_median": median([r["load_seconds"] for r in runs]),
        "export_seconds_median": median([r["export_seconds"] for r in runs]),
        **spread("total_seconds", [r["total_seconds"] for r in runs]),
        **spread("peak_rss_mib", [r["peak"] / 2**20 for r in runs]),
        "peak_over_baseline_mib_median": median([(r["peak"] - r["baseline"]) / 2**20
                                                 for r in runs]),
        "runs": runs,
    }
    save("export", result)
    return result

"""Loading gemma3-270m from its GGUF: wall time and peak RSS against the float32 parameter bytes.

Each run is a fresh process: its baseline RSS (interpreter, JAX, gemmaforge imported, nothing
loaded) is measured first, then `load("gemma3-270m")`, then the peak RSS the kernel recorded.
The target: peak - baseline < 1.3 x the float32 parameter bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import median, save, spread

CHILD = r"""
import json, resource, time
import psutil, jax
import model_zoo as mz
from model_zoo.checkpoints.default import default_checkpoint
from model_zoo.loading import load
default_checkpoint("gemma3-270m")  # assembled and hashed before the clock starts
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
model = load("gemma3-270m")
jax.block_until_ready(model.params)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
param_bytes = 4 * sum(mz.count_params(model.config))
print(json.dumps({"seconds": seconds, "baseline": baseline, "peak": peak,
                  "param_bytes": param_bytes}))
"""

TARGET_RATIO = 1.3


def run(repeats: int = 3) -> dict:
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                              check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    growth = [(r["peak"] - r["baseline"]) / r["param_bytes"] for r in runs]
    result = {
        "repeats": repeats,
        "param_bytes": runs[0]["param_bytes"],
        **spread("load_seconds", [r["seconds"] for r in runs]),
        "baseline_rss_mib_median": median([r["baseline"] / 2**20 for r in runs]),
        **spread("peak_rss_mib", [r["peak"] / 2**20 for r in runs]),
        **spread("peak_over_baseline_per_param_byte", growth),
        "target_ratio": TARGET_RATIO,
        "meets_target": max(growth) < TARGET_RATIO,
        "runs": runs,
    }
    save("load", result)
    return result

"""ONNX benchmarks.

`onnx`: speed of the ONNX runtimes on gemma3-270m, both profiles, with the JAX reference in the
same run for the ratio: prefill tokens/s on a ~500-token prompt and decode tokens/s over 32
tokens, medians over repeats after a warm-up.

`onnx-export`: exporting to ONNX (checkpoint or random weights loaded, validation excluded),
each preset in a fresh process: wall time and peak RSS against the float32 weights' size.
gemma2-2b (random weights, 10.5 GB of float32) shows whether the writer ever holds the weights
twice on this 24 GiB machine. Each exported model is then run once more in another process:
onnxruntime's logits against the JAX reference's (prefill of 6 tokens and 3 decode steps; the
reference runs first and is freed, so the two never hold the weights together).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile

from benchmarks.common import median, save, spread, time_generation

EXPORT_PRESETS = ("gemma3-270m", "gemma2-2b")

EXPORT = r"""
import json, os, resource, sys, time
import psutil
from exporter import export
from model_zoo.loading import load
preset, out = sys.argv[1], sys.argv[2]
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
model = load(preset, materialize=False)
manifest = export(model, out, formats=("onnx",))
seconds = time.perf_counter() - start
onnx = manifest["formats"]["onnx"]
print(json.dumps({"seconds": seconds, "baseline": baseline,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "weights_bytes": os.path.getsize(os.path.join(out, "weights.safetensors")),
                  "model_onnx_bytes": os.path.getsize(os.path.join(out, onnx["file"])),
                  "external_data": onnx.get("external_data"),
                  "nodes": onnx["nodes"]}))
"""

CHECK = r"""
import gc, json, resource, sys
import numpy as np
from runtimes.artifact import open_artifact
from runtimes.registry import make_runner
artifact = open_artifact(sys.argv[1])
ids, steps = [2, 651, 6037, 576, 6081, 603], (1000, 2000, 3000)
def trajectory(runner):
    return np.stack([runner.prefill(ids)] + [runner.decode(t) for t in steps])
reference = trajectory(make_runner("jax", artifact))
gc.collect()
ours = trajectory(make_runner("onnxruntime", artifact))
print(json.dumps({"max_abs_error": float(np.abs(reference - ours).max()),
                  "max_abs_logit": float(np.abs(reference).max()),
                  "top1_agreement": int((reference.argmax(-1) == ours.argmax(-1)).sum()),
                  "positions": len(ours),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}))
"""


def run(repeats: int = 5, new_tokens: int = 32, threads: int = 2) -> dict:
    """Speed of onnxruntime and onnxruntime-genai on gemma3-270m, both ONNX profiles, with the
    JAX reference in the same run for the ratio (a ~500-token prefill, 32 decoded tokens)."""
    from exporter import export
    from model_zoo.loading import load
    from runtimes.artifact import open_artifact
    from runtimes.registry import make_runner

    rows = {}
    model = load("gemma3-270m", materialize=False)
    with tempfile.TemporaryDirectory() as scratch:
        for profile in ("ort", "standard"):
            out = f"{scratch}/{profile}"
            export(model, out, formats=("onnx",), onnx_profile=profile)
            artifact = open_artifact(out)
            prompt = artifact.tokenizer().encode(
                " ".join(["The sea is calm and the waves are low."] * 60))[:500]
            runtimes = ("jax", "onnxruntime", "ort-genai") if profile == "ort" else (
                "onnxruntime", "ort-genai")
            for name in runtimes:
                runner = make_runner(name, artifact, threads=threads)
                label = name if name == "jax" else f"{name} ({profile})"
                rows[label] = time_generation(runner, prompt, new_tokens, repeats)
                del runner
    reference = rows["jax"]["decode_tokens_per_second_median"]
    for row in rows.values():
        row["decode_vs_jax"] = row["decode_tokens_per_second_median"] / reference
    result = {"preset": "gemma3-270m", "precision": "float32", "prompt_tokens": len(prompt),
              "new_tokens": new_tokens, "repeats": repeats, "threads": threads,
              "runtimes": rows}
    save("onnx", result)
    return result


def run_export(presets: tuple[str, ...] = EXPORT_PRESETS, repeats: int = 3) -> dict:
    """Exporting to ONNX in a fresh process, gemma3-270m and gemma2-2b (random weights): wall
    time and peak RSS against the float32 weights, then onnxruntime's logits against JAX's."""
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for preset in presets:
            runs = []
            for index in range(repeats if preset == "gemma3-270m" else 1):
                out = f"{scratch}/{preset}-{index}"
                done = subprocess.run([sys.executable, "-c", EXPORT, preset, out],
                                      capture_output=True, text=True)
                if done.returncode == 0 and index == 0:
                    checked = subprocess.run([sys.executable, "-c", CHECK, out],
                                             capture_output=True, text=True)
                    check = (json.loads(checked.stdout.strip().splitlines()[-1])
                             if checked.returncode == 0 else
                             {"error": (checked.stderr.strip().splitlines() or ["?"])[-1]})
                shutil.rmtree(out, ignore_errors=True)
                if done.returncode != 0:  # recorded, not raised: a failure is a result
                    runs.append({"error": (done.stderr.strip().splitlines()
                                           or [f"exit {done.returncode}"])[-1]})
                    break
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if "error" in runs[-1]:
                rows[preset] = runs[-1]
                continue
            weights = runs[0]["weights_bytes"]
            rows[preset] = {
                "runs": len(runs),
                **spread("seconds", [r["seconds"] for r in runs]),
                **spread("peak_rss_mib", [r["peak"] / 2**20 for r in runs]),
                "peak_over_baseline_mib_median": median([(r["peak"] - r["baseline"]) / 2**20
                                                         for r in runs]),
                "weights_mib": weights / 2**20,
                "peak_over_weights": median([r["peak"] / weights for r in runs]),
                "model_onnx_bytes": runs[0]["model_onnx_bytes"],
                "external_data": runs[0]["external_data"],
                "nodes": runs[0]["nodes"],
                "onnxruntime_vs_jax": check,
            }
    result = {"precision": "float32", "format": "onnx", "profile": "ort", "presets": rows}
    save("onnx-export", result)
    return result

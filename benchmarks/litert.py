"""LiteRT: what converting costs, and what the fused ops buy.

`litert-convert`: `export(..., formats=("litert",))` in a fresh process, wall time and peak RSS, for
gemma3-270m (its real weights) and gemma2-2b (random weights, drawn one tensor at a time into the
exported safetensors, from which they are written into the converted flatbuffer). The time
includes writing the safetensors and the .litertlm bundle; validation is excluded.

`litert`: gemma3-270m exported twice per recipe (float32, int8-dyn, int4), composites on and
plain ops (`--no-fused`; a quantized model keeps the table's lookup composite either way), then
in the same run
  - on `litert` (the Interpreter's signature runners, XNNPACK on): prefill and decode tokens/s;
  - on `litert-lm`: the engine's own benchmark (prefill and decode tokens/s);
  - how XNNPACK partitioned each signature, from the engine's verbose log: nodes it took, nodes
    left to the interpreter, partitions, and whether the composite nodes themselves were taken
    (a composite node left to the interpreter runs its decomposition subgraph, which XNNPACK
    may still run piecewise: fused in name only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from benchmarks.common import save, spread

CONVERT = r"""
import json, resource, sys, time
import psutil
from exporter import export
from model_zoo.checkpoints.default import default_checkpoint
from model_zoo.loading import load
preset, out = sys.argv[1], sys.argv[2]
default_checkpoint(preset)  # a packaged checkpoint is assembled and hashed before the clock
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
model = load(preset, materialize=False)
export(model, out, formats=("litert",), force=True)
done = time.perf_counter()
print(json.dumps({"seconds": done - start, "baseline": baseline,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

# Run in a child so that the engine's native log (stderr) can be read.
ENGINE = r"""
import json, sys
import litert_lm
litert_lm.set_min_log_severity(litert_lm.LogSeverity.VERBOSE)
bundle, prefill, decode, repeats, threads = sys.argv[1], *map(int, sys.argv[2:6])
cache = sys.argv[6]  # the packed-weight cache, as apps keep it (":nocache" runs several x slower)
runs = []
for _ in range(repeats + 1):  # the first run writes the weight cache
    info = litert_lm.Benchmark(bundle, backend=litert_lm.Backend.CPU(thread_count=threads),
                               prefill_tokens=prefill,
                               decode_tokens=decode, max_num_tokens=prefill + decode + 8,
                               cache_dir=cache,
                               activation_data_type=litert_lm.ActivationDataType.FLOAT32).run()
    runs.append({"prefill": info.last_prefill_tokens_per_second,
                 "decode": info.last_decode_tokens_per_second})
print(json.dumps(runs[1:]))
"""

PARTITION = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\) node, "
                       r"yielding (\d+) partitions for subgraph \d+ \(([^)]+)\)")

CONVERT_PRESETS = ("gemma3-270m", "gemma2-2b")


def run_convert(presets: tuple[str, ...] = CONVERT_PRESETS) -> dict:
    """Exporting to LiteRT in a fresh process, gemma3-270m and gemma2-2b (random weights): wall
    time, peak RSS, the converter's share, and every weight matrix found in place."""
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for preset in presets:
            done = subprocess.run([sys.executable, "-c", CONVERT, preset, f"{scratch}/{preset}"],
                                  capture_output=True, text=True)
            if done.returncode != 0:  # recorded, not raised: a failure to convert is a result
                reason = (f"killed by signal {-done.returncode} (out of memory?)"
                          if done.returncode < 0 else
                          (done.stderr.strip().splitlines() or ["no message"])[-1])
                rows[preset] = {"error": reason}
                continue
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            tflite = f"{scratch}/{preset}/litert/model.tflite"
            rows[preset] = {
                "seconds": measured["seconds"],
                "peak_rss_mib": measured["peak"] / 2**20,
                "peak_over_baseline_mib": (measured["peak"] - measured["baseline"]) / 2**20,
                "tflite_bytes": os.path.getsize(tflite),
                **_phases(f"{scratch}/{preset}"),
                **_weight_bytes(f"{scratch}/{preset}"),
                **_weights_in_place(f"{scratch}/{preset}", preset),
            }
            shutil.rmtree(f"{scratch}/{preset}")
    result = {"precision": "float32", "presets": rows}
    save("litert-convert", result)
    return result


def _weight_bytes(root: str) -> dict:
    from exporter.tflite_inspect import describe

    structure = describe(f"{root}/litert/model.tflite")
    return {"buffer_bytes": structure["buffer_bytes"],
            "weights_bytes": os.path.getsize(f"{root}/weights.safetensors"),
            "signatures": sorted(structure["signatures"])}


def _phases(root: str) -> dict:
    """The converter's share of the time, and the writing of the placed weights after it."""
    with open(f"{root}/manifest.json") as stream:
        manifest = json.load(stream)
    timings = manifest["timings"]["litert"]
    return {"convert_seconds": timings["convert_seconds"],
            "write_weights_seconds": timings["write_weights_seconds"],
            "weights_written_after_conversion":
                manifest["formats"]["litert"]["weights_written_after_conversion"]}


def _weights_in_place(root: str, preset: str, samples: int = 64) -> dict:
    """How many weight matrices the .tflite holds, at sampled elements, in their own element
    order or as a 2-D transpose: the values written after conversion are the exported ones."""
    import math
    import mmap
    from pathlib import Path

    import litert_converter.schema_py_generated as schema
    import numpy as np

    from exporter.tflite_weights import buffer_region
    from model_zoo.checkpoints.native import weight_offsets
    from model_zoo.presets import get_preset
    from model_zoo.transformer import weight_specs

    config, weights = get_preset(preset), f"{root}/weights.safetensors"
    offsets = weight_offsets(Path(weights), config)
    rng = np.random.default_rng(0)
    matrices = found = 0
    with open(f"{root}/litert/model.tflite", "rb") as file, \
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        model = schema.Model.GetRootAs(data, 0)
        by_size: dict[int, list[int]] = {}
        for index in range(model.BuffersLength()):
            offset, size = buffer_region(model.Buffers(index))
            by_size.setdefault(size // 4, []).append(offset)
        for name, spec in weight_specs(config).items():
            shape = spec.shape
            if len(shape) < 2:
                continue
            matrices += 1
            count = math.prod(shape)
            picks = rng.integers(0, count, samples)
            expected = np.memmap(weights, np.float32, "r", offsets[name], (count,))[picks]
            positions = [picks]
            for k in range(1, len(shape)):
                rows = math.prod(shape[:k])
                row, column = np.divmod(picks, count // rows)
                positions.append(column * rows + row)
            found += any(
                np.array_equal(np.frombuffer(data, np.float32, count, offset)[where], expected)
                for offset in by_size.get(count, []) for where in positions)
    return {"weight_matrices": matrices, "weight_matrices_found_in_place": found}


def partitions(log: str) -> dict:
    """{signature: {delegated, nodes, partitions}} from the engine's VERBOSE log, and the
    composite decomposition subgraphs XNNPACK prepared (each a sign that the composite node
    itself was left to the interpreter)."""
    signatures, decompositions = {}, set()
    for taken, total, _, parts, subgraph in PARTITION.findall(log):
        if subgraph.startswith(("odml.", "gemmaforge.")):
            decompositions.add(subgraph)
        else:
            signatures[subgraph] = {"delegated": int(taken), "nodes": int(total),
                                    "partitions": int(parts)}
    return {"signatures": signatures, "decomposition_subgraphs_delegated": len(decompositions)}


def engine_speed(artifact, prefill: int, decode: int, repeats: int, threads: int,
                 scratch: str) -> tuple[dict, str]:
    """The LiteRT-LM engine's own benchmark on the artifact's .litertlm, in a child process:
    median prefill and decode tokens/s over `repeats` runs after the one that writes the weight
    cache, and the engine's log."""
    bundle = str(artifact.file(artifact.format("litert")["bundle"]["file"]))
    engine = subprocess.run([sys.executable, "-c", ENGINE, bundle, str(prefill), str(decode),
                             str(repeats), str(threads), tempfile.mkdtemp(dir=scratch)],
                            capture_output=True, text=True, check=True)
    runs = json.loads(engine.stdout.strip().splitlines()[-1])
    return ({**spread("prefill_tokens_per_second", [r["prefill"] for r in runs]),
             **spread("decode_tokens_per_second", [r["decode"] for r in runs])},
            engine.stderr)


RECIPES = ("f32", "int8-dyn", "int4")


def run(repeats: int = 3, new_tokens: int = 32, engine_prefill: int = 128,
        engine_decode: int = 64, threads: int = 2, recipes: tuple[str, ...] = RECIPES) -> dict:
    """Composites against plain ops (`--no-fused`) for gemma3-270m in float32, int8-dyn and int4:
    tokens/s on the LiteRT Interpreter and on the LiteRT-LM engine, and how XNNPACK partitioned
    each graph."""
    from benchmarks.common import time_generation
    from exporter import export
    from exporter.tflite_inspect import describe
    from model_zoo.loading import load
    from runtimes.artifact import open_artifact
    from runtimes.registry import make_runner

    rows: dict = {}
    model = load("gemma3-270m")
    prompt = model.tokenizer.encode(" ".join(["The sea is calm and the waves are low."] * 12))[:100]
    with tempfile.TemporaryDirectory() as scratch:
        for recipe in recipes:
            rows[recipe] = {}
            for label, fused in (("composites", True), ("plain", False)):
                root = f"{scratch}/{recipe}-{label}"
                export(model, root, formats=("litert",), fused=fused,
                       quant=None if recipe == "f32" else recipe)
                artifact = open_artifact(root)
                speed = time_generation(make_runner("litert", artifact, threads=threads),
                                        prompt, new_tokens, repeats)
                engine, log = engine_speed(artifact, engine_prefill, engine_decode, repeats,
                                           threads, scratch)
                tflite = f"{root}/litert/model.tflite"
                structure = describe(tflite)
                rows[recipe][label] = {
                    "tflite_bytes": os.path.getsize(tflite),
                    "litert": speed,
                    "litert-lm": engine,
                    "decode_composites": structure["signatures"]["decode"]["composites"],
                    "xnnpack": partitions(log),
                }
                del artifact
                shutil.rmtree(root)
    result = {"preset": "gemma3-270m", "repeats": repeats,
              "litert_prompt_tokens": len(prompt), "litert_new_tokens": new_tokens,
              "engine_prefill_tokens": engine_prefill, "engine_decode_tokens": engine_decode,
              "threads": threads, "recipes": rows,
              "decode_speedup_of_plain_ops": {
                  recipe: {name: variants["plain"][name]["decode_tokens_per_second_median"]
                           / variants["composites"][name]["decode_tokens_per_second_median"]
                           for name in ("litert", "litert-lm")}
                  for recipe, variants in rows.items()}}
    save("litert", result)
    return result

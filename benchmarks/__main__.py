"""python -m benchmarks [NAME ...]: run the named benchmarks (default: all) and print results.

Results also land in out/bench/<name>.json.
"""

from __future__ import annotations

import json
import sys

from benchmarks import export, litert, load, onnx, quality, quantized, reference, runtimes

BENCHMARKS = {"load": load.run, "reference": reference.run, "export": export.run,
              "runtimes": runtimes.run, "litert": litert.run,
              "litert-convert": litert.run_convert, "onnx": onnx.run,
              "onnx-export": onnx.run_export, "quality": quality.run,
              "quality-int8": quality.run_int8,
              "quantized": quantized.run, "source": quantized.run_source,
              "quantized-litert": quantized.run_litert}


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    for name in names or list(BENCHMARKS):
        result = BENCHMARKS[name]()
        result.pop("runs", None)
        print(f"== {name}")
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])

"""python -m benchmarks [NAME ...]: run the named benchmarks (default: all), print their results
and write each to benchmarks/results/<name>.json, then regenerate docs/benchmarks.md.

python -m benchmarks report: regenerate docs/benchmarks.md from the results present, measuring
nothing.
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks import export, litert, load, onnx, quality, quantized, reference, report, runtimes
from benchmarks.common import record_wall_time

BENCHMARKS = {"load": load.run, "reference": reference.run, "export": export.run,
              "runtimes": runtimes.run, "litert": litert.run,
              "litert-convert": litert.run_convert, "onnx": onnx.run,
              "onnx-export": onnx.run_export, "quality": quality.run,
              "quality-int8": quality.run_int8,
              "quantized": quantized.run, "source": quantized.run_source,
              "quantized-litert": quantized.run_litert}


def main(names: list[str]) -> None:
    if names in (["-h"], ["--help"]):
        print(__doc__.strip(), f"\nNAME: {', '.join(BENCHMARKS)}", sep="\n")
        return
    if names == ["report"]:
        print(report.write(BENCHMARKS))
        return
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; known: report, "
                 f"{', '.join(BENCHMARKS)}")
    for name in names or list(BENCHMARKS):
        start = time.perf_counter()
        result = BENCHMARKS[name]()
        record_wall_time(name, time.perf_counter() - start)
        result.pop("runs", None)
        print(f"== {name}")
        print(json.dumps(result, indent=2))
    print(report.write(BENCHMARKS))


if __name__ == "__main__":
    main(sys.argv[1:])

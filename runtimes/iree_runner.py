"""The `iree` runner: an independent consumer of our StableHLO. Each fixed-shape entry point's MLIR
is compiled by iree-base-compiler for llvm-cpu and run by iree-base-runtime. Weights are copied
to the device once; the cache stays in device buffers between calls.

Compiled modules are cached under the gemmaforge cache directory, keyed by the MLIR, the compiler
version and the flags.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re

import numpy as np

from exporter.trace import DECODE, empty_cache
from model_zoo.checkpoints.default import cache_dir
from model_zoo.errors import GemmaforgeError
from runtimes.artifact import Artifact
from runtimes.entry_runner import EntryPointRunner

TARGET = "llvm-cpu"
FLAGS = ("--iree-llvmcpu-target-cpu=host",)
_MODULE_NAME = re.compile(r"^module @([\w.]+)", re.MULTILINE)


def compile_module(mlir: str, module_name: str) -> bytes:
    """The IREE flatbuffer of one entry point's MLIR (from the cache when compiled before)."""
    import iree.compiler as iree_compiler

    mlir = _MODULE_NAME.sub(f"module @{module_name}", mlir, count=1)
    version = importlib.metadata.version("iree-base-compiler")
    key = hashlib.sha256("\0".join((mlir, version, TARGET, *FLAGS)).encode()).hexdigest()
    cached = cache_dir() / "iree" / f"{key}.vmfb"
    if cached.exists():
        return cached.read_bytes()
    try:
        flatbuffer = iree_compiler.compile_str(mlir, target_backends=[TARGET],
                                               input_type="stablehlo", extra_args=list(FLAGS))
    except iree_compiler.CompilerToolError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "failed"
        raise GemmaforgeError(f"IREE could not compile {module_name}: {first}") from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(flatbuffer)
    os.replace(partial, cached)
    return flatbuffer


class IreeRunner(EntryPointRunner):
    name = "iree"

    def __init__(self, artifact: Artifact):
        import iree.runtime as iree_runtime

        super().__init__(artifact)
        section = artifact.format("stablehlo")
        platforms = section["platforms"]
        if "cpu" not in platforms:
            raise GemmaforgeError(f"{artifact.root} was not lowered for cpu; IREE's llvm-cpu "
                                  "target needs the cpu lowering")
        # A multi-platform module takes the platform's index first (jax.export's convention).
        self._platform_args = ([np.int32(platforms.index("cpu"))] if len(platforms) > 1
                               else [])
        self._runtime = iree_runtime
        self._iree_config = iree_runtime.Config("local-task")
        self._context = iree_runtime.SystemContext(config=self._iree_config)
        self._functions = {}
        for entry, info in section["entry_points"].items():
            if info["symbolic"]:
                continue
            if info["nr_devices"] != 1:
                raise GemmaforgeError(f"{artifact.root} is a sharded export over "
                                      f"{info['nr_devices']} devices; the iree runner takes "
                                      "single-device exports")
            module_name = entry.replace("-", "_")
            flatbuffer = compile_module(artifact.file(info["mlir"]).read_text(), module_name)
            self._context.add_vm_module(iree_runtime.VmModule.copy_buffer(
                self._context.instance, flatbuffer))
            self._functions[entry] = self._context.modules[module_name]["main"]
        weights = artifact.flat_weights()
        self._weights = [self._device(np.asarray(weights[name]))
                         for name in section["weight_order"]]
        self._cache_names = sorted(empty_cache(self._config, 1))
        self._cache = None

    def _device(self, array: np.ndarray):
        return self._runtime.asdevicearray(self._iree_config.device, array)

    def _reset(self) -> None:
        cache = empty_cache(self._config, self.max_len)
        self._cache = [self._device(cache[name]) for name in self._cache_names]

    def _call(self, entry: str, tokens: np.ndarray, input_pos: np.ndarray) -> np.ndarray | None:
        outputs = self._functions[entry](*self._platform_args, *self._weights,
                                         self._device(tokens), self._device(input_pos),
                                         *self._cache)
        if entry == DECODE:
            logits, *self._cache = outputs
            # A copy: to_host() maps the device buffer, which IREE reuses once it is released.
            return np.array(logits.to_host()[0, 0])
        self._cache = list(outputs)
        return None

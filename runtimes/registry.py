"""Runtime names -> runners of an artifact directory."""

from __future__ import annotations

from collections.abc import Callable

from model_zoo.errors import GemmaforgeError
from runtimes.artifact import Artifact
from runtimes.base import Runner
from runtimes.jax_runner import JaxRunner


def _jax(artifact: Artifact, threads: int | None) -> Runner:
    del threads  # XLA sizes its own thread pool
    return JaxRunner(artifact.config, artifact.weights(), max_len=artifact.max_len)


def _stablehlo(artifact: Artifact, threads: int | None) -> Runner:
    from runtimes.stablehlo_runner import StableHLORunner

    return StableHLORunner(artifact)


def _iree(artifact: Artifact, threads: int | None) -> Runner:
    from runtimes.iree_runner import IreeRunner

    return IreeRunner(artifact)


def _litert(artifact: Artifact, threads: int | None) -> Runner:
    from runtimes.litert_runner import LiteRTRunner

    return LiteRTRunner(artifact, threads=threads)


def _litert_lm(artifact: Artifact, threads: int | None):
    from runtimes.litert_runner import LiteRTLMRunner

    return LiteRTLMRunner(artifact, threads=threads)


def _litert_lm_task(artifact: Artifact, threads: int | None):
    from runtimes.litert_runner import LiteRTLMRunner

    return LiteRTLMRunner(artifact, threads=threads, bundle="task")


def _onnxruntime(artifact: Artifact, threads: int | None) -> Runner:
    from runtimes.onnx_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(artifact, threads=threads)


def _ort_genai(artifact: Artifact, threads: int | None) -> Runner:
    from runtimes.onnx_runner import OrtGenaiRunner

    return OrtGenaiRunner(artifact, threads=threads)


# name -> (format the runner reads, factory); "reference" needs only the weights.
RUNTIMES: dict[str, tuple[str, Callable]] = {
    "jax": ("reference", _jax),
    "stablehlo": ("stablehlo", _stablehlo),
    "iree": ("stablehlo", _iree),
    "onnxruntime": ("onnx", _onnxruntime),
    "ort-genai": ("onnx", _ort_genai),
    "litert": ("litert", _litert),
    "litert-lm": ("litert", _litert_lm),
    "litert-lm-task": ("litert", _litert_lm_task),
}
# Runtimes that need an optional part of their format's section: (key, how to get it).
OPTIONAL_PARTS = {"litert-lm-task": ("task", "export with --task")}
# The runtime a format is checked on right after export.
PRIMARY = {"stablehlo": "stablehlo", "onnx": "onnxruntime", "litert": "litert"}


def runtimes_for(artifact: Artifact) -> list[str]:
    """The runtimes that can run this artifact (the reference excluded)."""
    formats = artifact.manifest["formats"]
    return [name for name, (fmt, _) in RUNTIMES.items()
            if fmt != "reference" and fmt in formats
            and (name not in OPTIONAL_PARTS or OPTIONAL_PARTS[name][0] in formats[fmt])]


# What `run`, `chat` and `serve` pick when no runtime is named: the first whose format the
# directory holds. The generating engines first (what services and apps run), then XLA.
GENERATION_PREFERENCE = ("ort-genai", "litert-lm", "stablehlo", "onnxruntime", "litert", "iree")


def default_runtime(artifact: Artifact) -> str:
    """The runtime to generate with when the user names none: the first of
    GENERATION_PREFERENCE that this artifact can run."""
    available = runtimes_for(artifact)
    for name in GENERATION_PREFERENCE:
        if name in available:
            return name
    raise GemmaforgeError(f"{artifact.root} holds no format a runtime can generate from; "
                          "export it with --to stablehlo, onnx or litert")


def make_runner(name: str, artifact: Artifact, *, threads: int | None = None):
    """A runner of `artifact` on runtime `name` (`threads`: CPU threads where it takes them)."""
    if name not in RUNTIMES:
        raise GemmaforgeError(f"unknown runtime {name!r}; runtimes: {', '.join(RUNTIMES)}")
    fmt, factory = RUNTIMES[name]
    if fmt != "reference":
        section = artifact.format(fmt)  # a clear error when the artifact lacks that format
        if name in OPTIONAL_PARTS and OPTIONAL_PARTS[name][0] not in section:
            part, remedy = OPTIONAL_PARTS[name]
            raise GemmaforgeError(f"{artifact.root} has no {fmt} {part} bundle for {name}; "
                                  f"{remedy}")
    return factory(artifact, threads)

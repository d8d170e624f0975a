"""Runtime names -> runners of an artifact directory."""

from __future__ import annotations

from collections.abc import Callable

from model_zoo.errors import GemmaforgeError
from runtimes.artifact import Artifact
from runtimes.base import Runner
from runtimes.jax_runner import JaxRunner


def _jax(artifact: Artifact) -> Runner:
    return JaxRunner(artifact.config, artifact.weights(), max_len=artifact.max_len)


def _stablehlo(artifact: Artifact) -> Runner:
    from runtimes.stablehlo_runner import StableHLORunner

    return StableHLORunner(artifact)


def _iree(artifact: Artifact) -> Runner:
    from runtimes.iree_runner import IreeRunner

    return IreeRunner(artifact)


# name -> (format the runner reads, factory); "reference" needs only the weights.
RUNTIMES: dict[str, tuple[str, Callable[[Artifact], Runner]]] = {
    "jax": ("reference", _jax),
    "stablehlo": ("stablehlo", _stablehlo),
    "iree": ("stablehlo", _iree),
}


def runtimes_for(artifact: Artifact) -> list[str]:
    """The runtimes that can run this artifact (the reference excluded)."""
    return [name for name, (fmt, _) in RUNTIMES.items()
            if fmt != "reference" and fmt in artifact.manifest["formats"]]


def make_runner(name: str, artifact: Artifact) -> Runner:
    if name not in RUNTIMES:
        raise GemmaforgeError(f"unknown runtime {name!r}; runtimes: {', '.join(RUNTIMES)}")
    fmt, factory = RUNTIMES[name]
    if fmt != "reference":
        artifact.format(fmt)  # a clear error when the artifact lacks that format
    return factory(artifact)

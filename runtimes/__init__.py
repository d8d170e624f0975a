"""One Runner protocol (prefill / decode / generate) implemented for every runtime."""

from runtimes.artifact import Artifact, open_artifact, verify_artifact
from runtimes.base import Generation, Runner, generate
from runtimes.jax_runner import JaxRunner
from runtimes.sampling import Sampler, SamplerConfig

__all__ = ["Artifact", "Generation", "JaxRunner", "Runner", "Sampler", "SamplerConfig",
           "generate", "open_artifact", "verify_artifact"]

"""One Runner protocol (prefill / decode / generate) implemented for every runtime."""

from runtimes.base import Generation, Runner, generate
from runtimes.jax_runner import JaxRunner
from runtimes.sampling import Sampler, SamplerConfig

__all__ = ["Generation", "JaxRunner", "Runner", "Sampler", "SamplerConfig", "generate"]

"""Running exported artifacts: one Runner protocol (prefill / decode) implemented for every
runtime, and the library calls behind the CLI.

    generate(preset, prompt, ...)    load, quantize, continue a prompt on the JAX reference
    run(directory, prompt, ...)      continue a prompt with an artifact on one runtime
    validate(directory, ...)         every runtime's logits against the JAX reference
    open_artifact(directory)         an artifact, its manifest checked, its files verified on read
    verify_artifact(directory)       every file against the manifest, running nothing
"""

from runtimes.artifact import Artifact, open_artifact, verify_artifact
from runtimes.base import Generation, Runner
from runtimes.jax_runner import JaxRunner
from runtimes.registry import RUNTIMES, make_runner
from runtimes.sampling import GREEDY, Sampler, SamplerConfig
from runtimes.text import TextGeneration, generate, run
from runtimes.validation import validate_artifact as validate

__all__ = ["GREEDY", "RUNTIMES", "Artifact", "Generation", "JaxRunner", "Runner", "Sampler",
           "SamplerConfig", "TextGeneration", "generate", "make_runner", "open_artifact", "run",
           "validate", "verify_artifact"]

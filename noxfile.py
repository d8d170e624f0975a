"""Developer sessions. `nox -s tests` is the README's test command and what CI runs."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_venv = "yes"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, real-model tests (marked slow) included. Pass `-- -m "not slow"` for the
    fast part alone."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-ra", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Style (ruff) and layering (import-linter's contracts in pyproject.toml)."""
    session.install("ruff", "import-linter>=2.17,<3")
    session.run("ruff", "check", ".")
    session.run("lint-imports")


@nox.session
def fuzz(session: nox.Session) -> None:
    """The reader fuzz harness for some minutes (default 5; `-- --minutes 30 --seed 3`): every
    mutated GGUF, safetensors, HF config, tokenizer and manifest must load or fail in one line,
    never crash, hang, print a traceback or overrun memory."""
    session.install("-e", ".[dev]")
    session.run("python", "tests/fuzz_readers.py", *(session.posargs or ["--minutes", "5"]))


@nox.session
def reliability(session: nox.Session) -> None:
    """Regenerates docs/RELIABILITY.md: every crafted input of tests/bad_inputs.py as its own
    process, then the fuzz harness (`-- --fuzz-minutes N`)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "tests.reliability_report", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job on the embedded default model, gemma3-270m from the package index: export
    to StableHLO, ONNX and LiteRT (each validated against the JAX reference), then generate on a
    runtime of each: IREE running the StableHLO, onnxruntime-genai the ONNX folder and the
    LiteRT-LM engine the .litertlm bundle."""
    session.install("-e", ".")
    session.run("gemmaforge", "export", "gemma3-270m", "--to", "stablehlo,onnx,litert", "--out",
                "out/gemma3-270m", "--force", *session.posargs)
    for runtime in ("iree", "ort-genai", "litert-lm"):
        session.run("gemmaforge", "run", "out/gemma3-270m", "--runtime", runtime, "--prompt",
                    "The capital of France is", "--max-new-tokens", "24")


@nox.session
def bench(session: nox.Session) -> None:
    """Speed, memory and accuracy benchmarks (`-- NAME ...`, default all; `-- report` measures
    nothing): medians and ranges over several runs, written to benchmarks/results/<name>.json,
    from which docs/benchmarks.md is regenerated."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)

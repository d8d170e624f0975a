"""Validation, written once for every runtime: fixed prompts through the JAX reference and each
runner, prefill and teacher-forced decode steps, logits compared.

For each runtime and prompt: max abs logit error, top-1 agreement and KL(reference || runtime)
after the prompt ("prefill") and over N decode steps that feed both the reference's greedy
tokens. A runtime passes when every logit is within the precision's tolerance and every top-1
agrees. The summary goes into manifest.json and the full report into report/validation.json.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from pathlib import Path

import numpy as np

from exporter import integrity
from exporter.artifact import REPORT_DIR, interrupts_deferred, tool_versions, write_manifest
from model_zoo.errors import GemmaforgeError
from model_zoo.tokenizer import chat_prompt
from runtimes.artifact import Artifact, open_artifact
from runtimes.base import Runner
from runtimes.registry import PRIMARY, RUNTIMES, make_runner, runtimes_for
from runtimes.tolerances import (
    ACTIVATION_ROUNDING_KL_MAX,
    ACTIVATION_ROUNDING_KL_MEAN,
    ACTIVATION_ROUNDING_MIN_TOP1,
    artifact_tolerance,
)

DEFAULT_DECODE_STEPS = 16
TOOLS = {"iree": "iree-base-compiler"}
PROMPTS = {
    "short": "The capital of France is",
    "chat": chat_prompt("Write a haiku about the sea."),
    # Long enough to fill several prefill buckets and cross sliding windows; cut to fit.
    "long": " ".join(f"Item {i} of the list is the word {w}." for i, w in
                     enumerate(("sea", "salt", "wave", "shell", "tide", "foam") * 9)),
}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def kl_divergence(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(other)) per row, in nats."""
    log_p, log_q = log_softmax(reference), log_softmax(other)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    """Metrics of logits [N, V] against the reference's."""
    return {
        "positions": int(reference.shape[0]),
        "max_abs_error": float(np.abs(reference - other).max()),
        "max_abs_logit": float(np.abs(reference).max()),
        "top1_agreement": int((reference.argmax(-1) == other.argmax(-1)).sum()),
        "kl_mean": float(kl_divergence(reference, other).mean()),
        "kl_max": float(kl_divergence(reference, other).max()),
    }


def prompt_ids(artifact: Artifact, decode_steps: int) -> dict[str, list[int]]:
    """The fixed prompts as ids, each cut to leave room for the decode steps and the token the
    last step yields (a text runner stores that one too)."""
    tokenizer = artifact.tokenizer()
    room = artifact.max_len - decode_steps - 1
    if room < 2:
        raise GemmaforgeError(f"--decode-steps {decode_steps} leaves no room for a prompt in a "
                              f"cache of {artifact.max_len}")
    return {name: tokenizer.encode(text)[:room] for name, text in PROMPTS.items()}


def trajectory(runner: Runner, ids: list[int], forced: list[int] | None,
               steps: int) -> tuple[np.ndarray, list[int]]:
    """Logits [1 + steps, V]: after the prompt, then after each decode step. Decode feeds
    `forced` tokens, or the runner's own greedy choices when None."""
    logits = [np.asarray(runner.prefill(ids), np.float32)]
    tokens = []
    for step in range(steps):
        token = forced[step] if forced is not None else int(np.argmax(logits[-1]))
        tokens.append(token)
        logits.append(np.asarray(runner.decode(token), np.float32))
    return np.stack(logits), tokens


def compare_text(runner, tokenizer, prompt: str, reference_tokens: list[int],
                 stop_ids: tuple[int, ...]) -> dict:
    """A text runner's greedy continuation against the reference's greedy tokens (cut at the
    first stop token, which the runner does not print)."""
    steps = len(reference_tokens)
    expected = reference_tokens
    for index, token in enumerate(reference_tokens):
        if token in stop_ids:
            expected = reference_tokens[:index]
            break
    text = runner.generate_text(prompt, steps).text
    reference = tokenizer.decode(expected)
    # A streaming detokenizer holds back an unfinished UTF-8 sequence at the end: no text yet.
    identical = text in (reference, reference.rstrip("\ufffd"))
    return {"tokens": len(expected), "text_identical": identical,
            "matching_characters": len(os.path.commonprefix([text, reference])),
            "reference_characters": len(reference), "text": text, "reference_text": reference}


def rounds_activations(artifact: Artifact, runtime: str) -> bool:
    """Whether the runtime rounds activations to int8 its own way (runtimes.tolerances): ONNX
    whose MatMulNBits run at accuracy level 4, LiteRT's dynamic-range kernels."""
    family = RUNTIMES.get(runtime, ("",))[0]
    if family not in ("onnx", "litert"):
        return False
    quantization = artifact.format(family).get("quantization", {})
    if family == "onnx":
        return quantization.get("accuracy_level", 0) == 4
    return bool(quantization.get("activations"))


def runtime_tolerance(artifact: Artifact, runtime: str) -> dict:
    """What the runtime's logits must meet: within atol + rtol * max |logit| of the reference
    with every top-1 equal (the artifact's precision), or, where activations are rounded to
    int8 (by the recipe or by the runtime), the activation-rounding tolerance over all of the
    runtime's positions together (kl_mean, kl_max, min_top1)."""
    if artifact.config.activation_quant is not None or rounds_activations(artifact, runtime):
        return {"kl_mean": ACTIVATION_ROUNDING_KL_MEAN, "kl_max": ACTIVATION_ROUNDING_KL_MAX,
                "min_top1": ACTIVATION_ROUNDING_MIN_TOP1}
    atol, rtol = artifact_tolerance(artifact.manifest.precision)
    return {"atol": atol, "rtol_of_max_logit": rtol, "min_top1": 1.0}


def judge(parts: list[dict], tolerance: dict) -> bool:
    """Whether a runtime's parts (the metrics of each prompt's prefill and decode, or its
    generations) meet `tolerance`: each part on its own for a logit bound, all of them
    together for the activation-rounding tolerance; a generation must be identical text."""
    if not all(metrics["text_identical"] for metrics in parts if "text_identical" in metrics):
        return False
    logits = [metrics for metrics in parts if "text_identical" not in metrics]
    if "kl_mean" in tolerance:
        if not logits:
            return True
        positions = sum(m["positions"] for m in logits)
        return (sum(m["top1_agreement"] for m in logits) >= tolerance["min_top1"] * positions
                and sum(m["kl_mean"] * m["positions"] for m in logits)
                <= tolerance["kl_mean"] * positions
                and max(m["kl_max"] for m in logits) <= tolerance["kl_max"])
    return all(m["top1_agreement"] >= tolerance["min_top1"] * m["positions"]
               and m["max_abs_error"] <= (tolerance["atol"] + tolerance["rtol_of_max_logit"]
                                          * m["max_abs_logit"]) for m in logits)


def greedy_tokens(artifact: Artifact, runtime: str, prompts: dict[str, list[int]],
                  steps: int, threads: int | None) -> dict[str, list[int]]:
    """prompt -> the runtime's own greedy tokens after it (steps + 1 of them)."""
    runner = make_runner(runtime, artifact, threads=threads)
    tokens = {}
    for name, ids in prompts.items():
        logits, chosen = trajectory(runner, ids, None, steps)
        tokens[name] = [*chosen, int(np.argmax(logits[-1]))]
    return tokens


@dataclasses.dataclass(frozen=True)
class _Reference:
    """The JAX reference's logits and greedy tokens on the fixed prompts, which every runtime
    of one validation is compared with."""

    artifact: Artifact
    prompts: dict[str, list[int]]
    expected: dict[str, tuple[np.ndarray, list[int]]]
    decode_steps: int
    threads: int | None
    # format -> prompt -> its logits runner's own greedy tokens (text runners' reference where
    # that runtime rounds activations), made when first needed.
    own_greedy: dict[str, dict[str, list[int]]] = dataclasses.field(default_factory=dict)


def validate_artifact(path: str | os.PathLike, runtimes: list[str] | None = None, *,
                      decode_steps: int = DEFAULT_DECODE_STEPS, record: bool = True,
                      threads: int | None = None) -> dict:
    """Validates every runtime on the artifact (default: every runtime of its formats);
    returns the report (and, with `record`, writes it beside the manifest's summary)."""
    artifact = open_artifact(path)
    runtimes = runtimes or runtimes_for(artifact)
    precision = artifact.manifest.precision
    prompts = prompt_ids(artifact, decode_steps)
    jax_runner = make_runner("jax", artifact)
    reference = _Reference(artifact, prompts,
                           {name: trajectory(jax_runner, ids, None, decode_steps)
                            for name, ids in prompts.items()}, decode_steps, threads)
    results = {}
    for runtime in runtimes:
        results[runtime] = _check_runtime(reference, runtime)
        gc.collect()  # one runtime's copy of the weights at a time
    report = {
        "precision": precision,
        "tolerance": dict(zip(("atol", "rtol_of_max_logit"), artifact_tolerance(precision),
                              strict=True)),
        "decode_steps": decode_steps,
        "reference": "jax",
        "runtimes": results,
        "passed": all(r["passed"] for r in results.values()),
        "tools": tool_versions("jax", "jaxlib", *(TOOLS[r] for r in runtimes if r in TOOLS)),
    }
    if record:
        _record(artifact, report)
    return report


def _check_runtime(reference: _Reference, runtime: str) -> dict:
    """One runtime's result: its metrics on each prompt, judged against its tolerance."""
    artifact, tokenizer = reference.artifact, reference.artifact.tokenizer()
    started = time.perf_counter()
    runner = make_runner(runtime, artifact, threads=reference.threads)
    load_seconds = time.perf_counter() - started
    text_only = getattr(runner, "text_only", False)
    # int8 activations may turn a near-tie the other way, and greedy text then parts from the
    # reference's: such a text runner must continue as the same model file does under its
    # logits runner, which is judged on its own.
    text_reference = ("jax" if not text_only or not rounds_activations(artifact, runtime)
                      else PRIMARY[RUNTIMES[runtime][0]])
    per_prompt = {}
    for name, ids in reference.prompts.items():
        ref_logits, forced = reference.expected[name]
        if text_only:
            greedy = _text_reference_tokens(reference, text_reference, name)
            per_prompt[name] = {"prompt_tokens": len(ids), "generation": compare_text(
                runner, tokenizer, tokenizer.decode(ids[1:]), greedy, tokenizer.stop_ids)}
            continue
        logits, _ = trajectory(runner, ids, forced, reference.decode_steps)
        per_prompt[name] = {"prompt_tokens": len(ids),
                            "prefill": compare(ref_logits[:1], logits[:1]),
                            "decode": compare(ref_logits[1:], logits[1:])}
    tolerance = runtime_tolerance(artifact, runtime)
    passed = judge([metrics for p in per_prompt.values()
                    for part, metrics in p.items() if part != "prompt_tokens"], tolerance)
    result = {"passed": passed, "load_seconds": round(load_seconds, 2), "prompts": per_prompt}
    if "kl_mean" in tolerance:
        result["tolerance"] = tolerance
    if text_reference != "jax":
        result["text_reference"] = text_reference
    return result


def _text_reference_tokens(reference: _Reference, text_reference: str, prompt: str
                           ) -> list[int]:
    """The greedy tokens a text runner's continuation of `prompt` must match: the JAX
    reference's (it fed its greedy tokens back; the last logits give one more), or those of
    the runtime `text_reference`."""
    if text_reference == "jax":
        ref_logits, forced = reference.expected[prompt]
        return [*forced, int(np.argmax(ref_logits[-1]))]
    if text_reference not in reference.own_greedy:
        reference.own_greedy[text_reference] = greedy_tokens(
            reference.artifact, text_reference, reference.prompts, reference.decode_steps,
            reference.threads)
    return reference.own_greedy[text_reference][prompt]


def summary(report: dict) -> dict:
    """The per-runtime worst case, as the manifest keeps it."""
    out = {"passed": report["passed"], "precision": report["precision"], "runtimes": {}}
    for runtime, result in report["runtimes"].items():
        parts = [metrics for p in result["prompts"].values()
                 for part, metrics in p.items() if part != "prompt_tokens"]
        row = {"passed": result["passed"]}
        if "text_identical" in parts[0]:
            row["greedy_texts_identical"] = (f"{sum(p['text_identical'] for p in parts)}/"
                                             f"{len(parts)}")
            row["text_reference"] = result.get("text_reference", "jax")
        else:
            row.update(max_abs_error=max(p["max_abs_error"] for p in parts),
                       top1_agreement=f"{sum(p['top1_agreement'] for p in parts)}/"
                                      f"{sum(p['positions'] for p in parts)}",
                       kl_max=max(p["kl_max"] for p in parts))
        out["runtimes"][runtime] = row
    return out


def _record(artifact: Artifact, report: dict) -> None:
    """Writes the report and the manifest's summary together: an interrupt waits for both, so
    an artifact never keeps a report its manifest does not record (nor half of either)."""
    reports = artifact.root / REPORT_DIR
    if reports.is_symlink() or reports.exists() and not reports.is_dir():
        raise GemmaforgeError(f"{reports} is not a folder of the artifact (a link or a file); "
                              "remove it so that the validation report can be written")
    manifest = artifact.manifest.with_validation(
        {"status": "passed" if report["passed"] else "failed", **summary(report)})
    with interrupts_deferred():
        reports.mkdir(exist_ok=True)
        integrity.write_atomically(reports / "validation.json",
                                   (json.dumps(report, indent=2) + "\n").encode())
        write_manifest(Path(artifact.root), manifest)


def format_report(report: dict) -> str:
    """A human-readable table of the summary."""
    lines = [f"precision {report['precision']}, {report['decode_steps']} decode steps, "
             f"reference jax"]
    lines.append(f"{'runtime':<12}{'max |err|':>12}{'top-1':>10}{'KL max':>12}  result")
    for runtime, row in summary(report)["runtimes"].items():
        verdict = "pass" if row["passed"] else "FAIL"
        if "greedy_texts_identical" in row:
            lines.append(f"{runtime:<12}{'(text)':>12}{row['greedy_texts_identical']:>10}"
                         f"{'':>12}  {verdict}  greedy continuations identical to "
                         f"{row['text_reference']}'s")
            continue
        lines.append(f"{runtime:<12}{row['max_abs_error']:>12.3g}{row['top1_agreement']:>10}"
                     f"{row['kl_max']:>12.3g}  {verdict}")
    return "\n".join(lines)

"""`gemmaforge`: every command is a thin wrapper over a library function.

Errors a user can cause (unknown preset, bad flag values, a wrong path) print one line on stderr
and exit non-zero, without a traceback.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import signal
import sys
import time

import typer
from typer._click.exceptions import NoArgsIsHelpError

import runtimes
from exporter import ExportRequest, export, parse_buckets, parse_formats, parse_platforms
from exporter.artifact import INTERRUPTS, reserve
from model_zoo import get_preset, preset_names
from model_zoo.errors import GemmaforgeError
from model_zoo.loading import describe, load
from model_zoo.sharding import make_mesh, parse_mesh
from runtimes.registry import PRIMARY, RUNTIMES
from runtimes.sampling import SamplerConfig
from runtimes.validation import DEFAULT_DECODE_STEPS, format_report, summary

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export Gemma models from JAX to StableHLO, ONNX and LiteRT.")
zoo = typer.Typer(no_args_is_help=True, help="The model zoo: presets and their sizes.")
app.add_typer(zoo, name="zoo")


@zoo.command("list")
def zoo_list(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """List the presets with their parameter counts."""
    rows = [describe(get_preset(name)) for name in preset_names()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<14}{'family':<8}{'layers':>7}{'d_model':>9}{'heads':>7}{'kv':>4}"
          f"{'embedding':>16}{'non-embedding':>17}")
    for r in rows:
        print(f"{r['name']:<14}{r['family']:<8}{r['num_layers']:>7}{r['embed_dim']:>9}"
              f"{r['num_heads']:>7}{r['num_kv_heads']:>4}{r['embedding_params']:>16,}"
              f"{r['non_embedding_params']:>17,}")


@zoo.command("show")
def zoo_show(name: str = typer.Argument(..., help="Preset name (see `zoo list`)."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show one preset."""
    info = describe(get_preset(name))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "attention_types":
            value = " ".join("G" if v == "global" else "L" for v in value) + "  (L local, G global)"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        print(f"{key:<{width}}  {value}")


def _print_generation(result, as_json: bool, chat: bool) -> None:
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return
    print(result.prompt + result.text if not chat else result.text)
    print(f"[{result.runtime}] prompt: {len(result.prompt_ids)} tokens at "
          f"{result.prefill_tokens_per_second:.1f} tok/s (the first call may compile); "
          f"decode: {len(result.generated_ids)} tokens at "
          f"{result.decode_tokens_per_second:.1f} tok/s", file=sys.stderr)


@app.command("generate")
def generate_command(
    preset: str | None = typer.Argument(
        None, help="Preset name (see `gemmaforge zoo list`); optional with an HF folder."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", "-c",
        help="GGUF file, HF folder, .safetensors file or Orbax directory (default: the "
             "preset's packaged weights)."),
    tokenizer: str | None = typer.Option(None, "--tokenizer",
                                         help="SentencePiece tokenizer.model to use."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=0),
    seed: int = typer.Option(0, "--seed", min=0,
                             help="Seed of random weights and of sampling."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy."),
    top_k: int = typer.Option(0, "--top-k", min=0, help="Sample from the k most likely (0: all)."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus mass."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the chat template."),
    max_len: int | None = typer.Option(None, "--max-len", min=1,
                                       help="Cache length (default min(context, 1024))."),
    mesh: str | None = typer.Option(None, "--mesh", help="Shard parameters on a DATAxMODEL mesh."),
    quant: str | None = typer.Option(
        None, "--quant", "-q",
        help="Run the quantized reference: a recipe (f32, fp16, int8, int8-dyn, int4, "
             "int4-b128, int4-cal, source) or a .toml/.json recipe file."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
) -> None:
    """Generate text with the JAX reference model (greedy unless --temperature > 0)."""
    sampler = SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    result = runtimes.generate(
        preset, prompt, checkpoint=checkpoint, tokenizer=tokenizer, quant=quant,
        max_new_tokens=max_new_tokens, sampler=sampler, chat=chat, max_len=max_len,
        mesh=make_mesh(*parse_mesh(mesh)) if mesh else None, seed=seed)
    _print_generation(result, as_json, chat)
    if result.random_weights and not as_json:
        print(f"note: no checkpoint for {result.preset}: these are {result.weights}",
              file=sys.stderr)


@app.command("export")
def export_command(
    preset: str | None = typer.Argument(
        None, help="Preset name; optional with an HF folder as --checkpoint."),
    out: str = typer.Option(..., "--out", "-o", help="Artifact directory to write."),
    to: str = typer.Option("stablehlo", "--to",
                           help="Formats, comma-separated: stablehlo, onnx, litert."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", "-c",
                                          help="Weights (default: the preset's packaged ones)."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer.model to bundle."),
    max_len: int | None = typer.Option(None, "--max-len",
                                       help="Cache length (context); default min(context, 1024)."),
    buckets: str | None = typer.Option(None, "--buckets",
                                       help="Prefill lengths, e.g. 32,128,512 (those <= max-len)."),
    platforms: str = typer.Option("cpu", "--platforms", help="StableHLO platforms: cpu,cuda,tpu."),
    mesh: str | None = typer.Option(None, "--mesh", help="Export weights sharded on DATAxMODEL."),
    fused: bool = typer.Option(True, "--fused/--no-fused", help="Fused ops as composites."),
    symbolic: bool = typer.Option(True, "--symbolic/--no-symbolic",
                                  help="Also export a symbolic-length prefill."),
    seed: int = typer.Option(0, "--seed", help="Seed of random weights (presets without any)."),
    task: bool = typer.Option(False, "--task",
                              help="Also write a MediaPipe .task bundle (with --to litert)."),
    onnx_profile: str = typer.Option(
        "ort", "--onnx-profile",
        help="ONNX ops: ort (ONNX Runtime's fused contrib ops) or standard (opset 23 only)."),
    onnx_accuracy_level: int = typer.Option(
        0, "--onnx-accuracy-level",
        help="MatMulNBits' accuracy level for a quantized ONNX model: 0 (float32 activations, "
             "the reference's numbers) or 4 (int8 activations: faster, a few percent off)."),
    quant: str | None = typer.Option(
        None, "--quant", "-q",
        help="Quantize the weights once with a recipe (f32, fp16, int8, int4, int4-b128, "
             "int4-cal; source keeps a GGUF's own grids) or a .toml/.json recipe file; one "
             "quantization for every format (LiteRT: int8, float32 for source grids)."),
    force: bool = typer.Option(False, "--force",
                               help="Replace --out if it is an artifact directory."),
    validate: bool = typer.Option(True, "--validate/--no-validate",
                                  help="Validate each format on its main runtime after export."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export a model to an artifact directory (written atomically) and validate it."""
    request = ExportRequest.create(
        out, formats=parse_formats(to), max_len=max_len, buckets=parse_buckets(buckets),
        platforms=parse_platforms(platforms), mesh=make_mesh(*parse_mesh(mesh)) if mesh else None,
        fused=fused, symbolic_prefill=symbolic, task=task, onnx_profile=onnx_profile,
        quant=quant, onnx_accuracy_level=onnx_accuracy_level, force=force)
    # --out is checked and locked before the model loads, and stays locked until validation
    # has recorded its verdict: a second export of the same --out fails at once.
    with reserve(out, force=force):
        # Random weights stay undrawn: the writers stream them, one tensor at a time (a
        # calibrated recipe runs the model first, so it draws them).
        model = load(preset, checkpoint=checkpoint, tokenizer=tokenizer, seed=seed,
                     mesh=request.mesh, materialize=request.calibrated)
        manifest = export(model, request)
        # The quick check; `gemmaforge validate` runs every runtime.
        report = (runtimes.validate(out, [PRIMARY[name] for name in request.formats])
                  if validate else None)
    if as_json:
        print(json.dumps(runtimes.open_artifact(out).manifest.to_json(), indent=2))
    else:
        print(f"wrote {out}: {', '.join(request.formats)}, buckets "
              f"{','.join(map(str, manifest.buckets))}, max_len {manifest.max_len}, "
              f"weights {manifest.weights_source}"
              + (f", quantized {manifest.recipe}" if manifest.quantization else "")
              + f", {manifest.timings['export_seconds']} s")
        if report is not None:
            print(format_report(report))
    if report is not None and not report["passed"]:
        raise GemmaforgeError(f"{out} was written but failed validation; see "
                              f"{out}/report/validation.json")


_RUNTIMES_HELP = (f"Runtimes to check ({', '.join(RUNTIMES)}); default: every runtime of the "
                  "exported formats.")


@app.command("validate")
def validate_command(
    directory: str = typer.Argument(..., help="An artifact directory from `gemmaforge export`."),
    runtime: list[str] | None = typer.Option(None, "--runtime", "-r", help=_RUNTIMES_HELP),
    decode_steps: int = typer.Option(DEFAULT_DECODE_STEPS, "--decode-steps", min=1),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="CPU threads of the LiteRT and ONNX runtimes."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Compare each runtime with the JAX reference on fixed prompts (prefill + decode)."""
    report = runtimes.validate(directory, runtime or None, decode_steps=decode_steps,
                               threads=threads)
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    if not report["passed"]:
        failed = [r for r, row in summary(report)["runtimes"].items() if not row["passed"]]
        raise GemmaforgeError(f"validation failed on {', '.join(failed)}")


@app.command("run")
def run_command(
    directory: str = typer.Argument(..., help="An artifact directory from `gemmaforge export`."),
    runtime: str = typer.Option("stablehlo", "--runtime", "-r",
                                help=f"One of {', '.join(RUNTIMES)}."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=0),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of sampling."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy."),
    top_k: int = typer.Option(0, "--top-k", min=0),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the chat template."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="CPU threads of the LiteRT and ONNX runtimes."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
) -> None:
    """Generate text from an exported artifact on one runtime."""
    sampler = SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    result = runtimes.run(directory, prompt, runtime=runtime, max_new_tokens=max_new_tokens,
                          sampler=sampler, chat=chat, threads=threads)
    _print_generation(result, as_json, chat)


@app.command("verify")
def verify_command(
    directory: str = typer.Argument(..., help="An artifact directory from `gemmaforge export`."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Check every file of an artifact against its manifest (size and sha256), runs nothing."""
    result = runtimes.verify_artifact(directory)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for row in result["files"]:
            print(f"{'ok' if row['status'] == 'ok' else 'FAIL':<5}{row['size']:>14,}  "
                  f"{row['path']}" + ("" if row["status"] == "ok" else f"  ({row['status']})"))
        for path in result["unlisted"]:
            print(f"{'FAIL':<5}{'':>14}  {path}  (not listed in the manifest)")
    if not result["passed"]:
        raise GemmaforgeError(f"{directory} does not match its manifest: re-export it or get "
                              "it again from its source")


class Terminated(BaseException):
    """SIGTERM, raised where the program is, as KeyboardInterrupt is for SIGINT: every cleanup
    on the way out runs (an export's scratch directory and lock go)."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _raise_later(signum: int) -> None:
    time.sleep(0.01)
    _thread.interrupt_main(signum)


def _keep_interrupts(previous_hook):
    """An unraisable-exception hook that gives back an interrupt raised where Python swallows
    exceptions (JAX's gc callback, a __del__), instead of losing it and carrying the export on
    to the end: the signal is raised again in the main thread, from another thread a moment
    later (raised from here it would be raised in this hook, and lost again)."""
    signals = {KeyboardInterrupt: signal.SIGINT, Terminated: signal.SIGTERM}

    def hook(unraisable) -> None:
        if unraisable.exc_type not in signals:
            previous_hook(unraisable)
            return
        _thread.start_new_thread(_raise_later, (signals[unraisable.exc_type],))

    return hook


@contextlib.contextmanager
def _interruptible():
    """SIGINT and SIGTERM end the command by exceptions, whatever runs when they come."""
    previous = signal.signal(signal.SIGTERM, _terminate), sys.unraisablehook
    sys.unraisablehook = _keep_interrupts(previous[1])
    try:
        # The console script (cli.launch) holds them back while the modules load.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        sys.unraisablehook = previous[1]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit; SIGINT
    exits 130 and SIGTERM 143, after the cleanups (an interrupted export leaves nothing, or a
    complete artifact whose manifest says it was not validated)."""
    command = typer.main.get_command(app)
    try:
        with _interruptible():
            result = command.main(args=argv, prog_name="gemmaforge", standalone_mode=False)
    except NoArgsIsHelpError as error:
        print(error.ctx.get_help())
        sys.exit(2)
    except typer.Exit as stop:
        sys.exit(stop.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("gemmaforge: aborted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("gemmaforge: terminated", file=sys.stderr)
        sys.exit(143)
    except typer.TyperException as error:
        print(f"gemmaforge: error: {error.format_message()}", file=sys.stderr)
        sys.exit(error.exit_code)
    except GemmaforgeError as error:
        print(f"gemmaforge: error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)

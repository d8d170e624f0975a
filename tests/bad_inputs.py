"""The catalogue of crafted inputs gemmaforge is tried on, one `BadInput` each: what it is, how
to make it in a scratch folder, the command line that reads it, and the one-line error expected.

`tests/test_bad_inputs.py` runs every case through the CLI and checks that it ends in that
error, that nothing was written or removed, and that no traceback was printed;
`python -m tests.reliability_report` runs them as separate processes and writes
docs/RELIABILITY.md from what happened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

import model_zoo as mz
from model_zoo.spm import sentencepiece_twin

PRESET = "tiny-gemma2"
BUCKETS = (8,)
MAX_LEN = 32


@dataclasses.dataclass(frozen=True)
class BadInput:
    """One crafted input.

    Attributes:
      name: a short id.
      what: the input, in words.
      make: (scratch folder, a good artifact to copy) -> the gemmaforge arguments that read it.
      expect: a fragment of the one-line error.
      exit_code: the exit status expected (2: refused by the option parser).
    """

    name: str
    what: str
    make: Callable[[Path, Path], list[str]]
    expect: str
    exit_code: int = 1


def good_artifact(out: Path, params=None) -> Path:
    """tiny-gemma2 exported to every format, unvalidated (the cases' starting point)."""
    from exporter import export

    config = mz.get_preset(PRESET)
    params = params if params is not None else mz.init_params(config, 0)
    model = mz.LoadedModel(config, params, mz.ByteTokenizer(), "random weights (seed 0)", True)
    export(model, out, formats=("stablehlo", "onnx", "litert"), buckets=BUCKETS,
           max_len=MAX_LEN, symbolic_prefill=False)
    return out


def _copy(scratch: Path, good: Path) -> Path:
    copy = scratch / "artifact"
    shutil.copytree(good, copy, symlinks=True)
    return copy


def _edit_manifest(root: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _entry(manifest: dict, path: str) -> dict:
    return next(e for e in manifest["files"] if e["path"] == path)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _run(root: Path, runtime: str, *extra: str) -> list[str]:
    return ["run", str(root), "-r", runtime, "-p", "Hi", "-n", "2", *extra]


def _tampered(relative: str, runtime: str) -> BadInput:
    def make(scratch: Path, good: Path) -> list[str]:
        root = _copy(scratch, good)
        _flip_a_byte(root / relative)
        return _run(root, runtime)

    return BadInput(f"tampered-{relative.replace('/', '-')}",
                    f"one byte of `{relative}` changed (same size), run on {runtime}", make,
                    f"{relative} has changed since export (its sha256")


def _manifest_edit(name: str, what: str, change: Callable[[dict], object], expect: str,
                   runtime: str = "stablehlo", command: str = "run") -> BadInput:
    def make(scratch: Path, good: Path) -> list[str]:
        root = _copy(scratch, good)
        _edit_manifest(root, change)
        return _run(root, runtime) if command == "run" else [command, str(root)]

    return BadInput(name, what, make, expect)


def _manifest_bytes(name: str, what: str, content: bytes, expect: str) -> BadInput:
    def make(scratch: Path, good: Path) -> list[str]:
        root = _copy(scratch, good)
        (root / "manifest.json").write_bytes(content)
        return _run(root, "stablehlo")

    return BadInput(name, what, make, expect)


def _crafted_digest(scratch: Path, good: Path) -> list[str]:
    """The digest that became the engine's cache path, whose parent's folders were pruned."""
    victim = scratch / "victim"
    for index in range(8):
        (victim / f"folder{index}").mkdir(parents=True)
    root = _copy(scratch, good)
    _edit_manifest(root, lambda m: _entry(m, "litert/model.litertlm").update(
        sha256="../../victim/zzz"))
    return _run(root, "litert-lm")


def _symlink_out(scratch: Path, good: Path) -> list[str]:
    root = _copy(scratch, good)
    outside = scratch / "elsewhere.model"
    os.replace(root / "tokenizer.model", outside)
    (root / "tokenizer.model").symlink_to(outside)
    return _run(root, "stablehlo")


def _special_file(target: str, relative: str) -> Callable[[Path, Path], list[str]]:
    def make(scratch: Path, good: Path) -> list[str]:
        root = _copy(scratch, good)
        (root / relative).unlink()
        if target == "fifo":
            os.mkfifo(root / relative)
        else:
            (root / relative).symlink_to(target)
        return _run(root, "stablehlo")

    return make


def _swapped_tokenizer(scratch: Path, good: Path) -> list[str]:
    """A larger vocabulary in the tokenizer's place, its digest recorded to match."""
    from exporter.integrity import sha256_file

    root = _copy(scratch, good)
    bigger = sentencepiece_twin(mz.ByteTokenizer(), 4 * mz.get_preset(PRESET).vocab_size)
    (root / "tokenizer.model").write_bytes(bigger)
    digest = sha256_file(root / "tokenizer.model")
    _edit_manifest(root, lambda m: _entry(m, "tokenizer.model").update(
        size=len(bigger), sha256=digest))
    return _run(root, "stablehlo")


def _planted_in_genai_folder(scratch: Path, good: Path) -> list[str]:
    root = _copy(scratch, good)
    (root / "onnx" / "planted.onnx").write_bytes(b"planted")
    return _run(root, "ort-genai")


def _option(name: str, what: str, extra: tuple[str, ...], expect: str,
            exit_code: int) -> BadInput:
    def make(scratch: Path, good: Path) -> list[str]:
        return _run(_copy(scratch, good), "stablehlo", *extra)

    return BadInput(name, what, make, expect, exit_code)


ARTIFACT_CASES = [
    BadInput("crafted-digest", "a manifest digest `../../victim/zzz` for the .litertlm (it "
             "deleted folders outside the artifact)", _crafted_digest,
             "sha256 must be 64 lowercase hex digits"),
    *(_tampered(relative, runtime) for relative, runtime in (
        ("weights.safetensors", "stablehlo"), ("stablehlo/decode.jax_exported", "stablehlo"),
        ("stablehlo/decode.mlir", "iree"), ("onnx/model.onnx", "onnxruntime"),
        ("onnx/genai_config.json", "ort-genai"),
        ("litert/model.tflite", "litert"), ("litert/model.litertlm", "litert-lm"),
        ("tokenizer.model", "stablehlo"))),
    _manifest_edit("absolute-path", "a manifest file path `/etc/passwd`",
                   lambda m: m["files"][0].update(path="/etc/passwd"), "must stay inside it"),
    _manifest_edit("dotdot-path", "a manifest file path `../outside`",
                   lambda m: m["files"][0].update(path="../outside"), "must stay inside it"),
    BadInput("symlink-out", "tokenizer.model a symbolic link to a file outside the artifact",
             _symlink_out, "leads outside"),
    BadInput("fifo-file", "tokenizer.model replaced by a FIFO",
             _special_file("fifo", "tokenizer.model"), "not a regular file"),
    BadInput("dev-zero-manifest", "manifest.json a link to /dev/zero",
             _special_file("/dev/zero", "manifest.json"), "leads outside"),
    BadInput("fifo-manifest", "manifest.json replaced by a FIFO",
             _special_file("fifo", "manifest.json"), "not a regular file"),
    _manifest_edit("bad-buckets", "buckets [0, -5] (looped forever)",
                   lambda m: m.update(buckets=[0, -5]), "each bucket must be an integer"),
    _manifest_edit("huge-max-len", "max_len 10^12",
                   lambda m: m.update(max_len=10**12), "max_len must be an integer in"),
    _manifest_edit("no-formats", "no `formats` key", lambda m: m.pop("formats"),
                   "'formats' is missing"),
    _manifest_edit("no-files", "no `files` key", lambda m: m.pop("files"),
                   "'files' must be a list"),
    _manifest_edit("no-config", "no `config` key", lambda m: m.pop("config"),
                   "'config' is missing"),
    _manifest_edit("config-heads-0", "config num_heads 0",
                   lambda m: m["config"].update(num_heads=0), "num_heads"),
    _manifest_edit("config-layers-1e7", "config num_layers 10^7",
                   lambda m: m["config"].update(num_layers=10**7), "num_layers"),
    _manifest_edit("section-unlisted-file", "the litert section names a file the manifest "
                   "does not list", lambda m: m["formats"]["litert"].update(file="x.tflite"),
                   "not among the manifest's files", runtime="litert"),
    _manifest_edit("verify-crafted", "`verify` on a manifest listing a file twice",
                   lambda m: m["files"].append(m["files"][0]), "is listed twice",
                   command="verify"),
    _manifest_bytes("manifest-list", "manifest.json holding a JSON list", b"[1, 2]",
                    "format_version"),
    _manifest_bytes("manifest-not-utf8", "manifest.json of bytes that are not UTF-8",
                    b"\xff\xfe\x00", "not valid JSON"),
    _manifest_bytes("manifest-deep", "manifest.json nested 100,000 levels deep",
                    b"[" * 100_000, "not valid JSON"),
    BadInput("swapped-tokenizer", "a tokenizer of 4x the model's vocabulary, its digest "
             "recorded to match", _swapped_tokenizer, "pieces but the model embeds"),
    BadInput("planted-genai-file", "a file planted in the onnx/ folder onnxruntime-genai reads",
             _planted_in_genai_folder, "is not among the manifest's files"),
]

OPTION_CASES = [
    _option("seed-negative", "--seed -1", ("--seed", "-1"), "--seed", 2),
    _option("temperature-nan", "--temperature nan", ("--temperature", "nan"), "--temperature", 2),
    _option("top-p-nan", "--top-p nan", ("--top-p", "nan"), "--top-p", 2),
    _option("top-k-negative", "--top-k -1", ("--top-k", "-1"), "--top-k", 2),
    _option("unknown-runtime", "--runtime nosuch", ("--runtime", "nosuch"),
            "unknown runtime", 1),
]

CHECKPOINT_PRESET = "tiny-gemma3"


def _generate(checkpoint: Path, *extra: str) -> list[str]:
    return ["generate", CHECKPOINT_PRESET, "--checkpoint", str(checkpoint), "-p", "Hi", "-n",
            "1", *extra]


def _valid_gguf(scratch: Path):
    """A valid tiny GGUF, as editable parts (tests.test_untrusted_checkpoints.GgufParts)."""
    from tests.test_untrusted_checkpoints import GgufParts
    from tests.writers import write_gguf

    config = mz.get_preset(CHECKPOINT_PRESET)
    path = scratch / "valid.gguf"
    write_gguf(path, config, mz.init_params(config, 0))
    parts = GgufParts.of(path)
    path.unlink()
    return parts


def _gguf(name: str, what: str, change: Callable, expect: str) -> BadInput:
    def make(scratch: Path, good: Path) -> list[str]:
        parts = _valid_gguf(scratch)
        data = change(parts)
        (scratch / "model.gguf").write_bytes(data if isinstance(data, bytes) else parts.encode())
        return _generate(scratch / "model.gguf")

    return BadInput(name, what, make, expect)


def _shifted(parts, name: str, by: int) -> None:
    parts.tensor(name).offset += by


def _retyped(parts, name: str, qtype: str) -> None:
    import gguf

    parts.tensor(name).type_id = int(gguf.GGMLQuantizationType[qtype])


def _nan_norm(parts) -> None:
    norm = parts.tensor("output_norm.weight")
    norm.data = np.full(len(norm.data) // 4, np.nan, np.float32).tobytes()


def _valid_safetensors(scratch: Path) -> tuple[dict, bytes]:
    from tests.test_untrusted_checkpoints import safetensors_parts
    from tests.writers import write_hf_folder

    config = mz.get_preset(CHECKPOINT_PRESET)
    write_hf_folder(scratch / "valid-hf", config, mz.init_params(config, 0), files=1)
    data = next((scratch / "valid-hf").glob("*.safetensors")).read_bytes()
    shutil.rmtree(scratch / "valid-hf")
    return safetensors_parts(data)


NORM = "model.norm.weight"


def _safetensors(name: str, what: str, change: Callable[[dict], object],
                 expect: str) -> BadInput:
    def make(scratch: Path, good: Path) -> list[str]:
        from tests.test_untrusted_checkpoints import encode_safetensors
        from tests.writers import tiny_tokenizer_model

        header, payload = _valid_safetensors(scratch)
        (scratch / "model.safetensors").write_bytes(encode_safetensors(change(header), payload))
        (scratch / "tokenizer.model").write_bytes(
            tiny_tokenizer_model(mz.get_preset(CHECKPOINT_PRESET).vocab_size))
        return _generate(scratch / "model.safetensors", "--tokenizer",
                         str(scratch / "tokenizer.model"))

    return BadInput(name, what, make, expect)


def _with_offsets(header: dict, first: int, last: int) -> dict:
    return {**header, NORM: {**header[NORM], "data_offsets": [first, last]}}


def _hf_folder(name: str, what: str, change: Callable[[Path], object], expect: str) -> BadInput:
    def make(scratch: Path, good: Path) -> list[str]:
        from tests.writers import write_hf_folder

        config = mz.get_preset(CHECKPOINT_PRESET)
        write_hf_folder(scratch / "hf", config, mz.init_params(config, 0), files=2)
        change(scratch / "hf")
        return ["generate", "--checkpoint", str(scratch / "hf"), "-p", "Hi", "-n", "1"]

    return BadInput(name, what, make, expect)


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _index_entry(folder: Path, name: str) -> None:
    _edit_json(folder / "model.safetensors.index.json",
               lambda index: index["weight_map"].update({NORM: name}))


def _special_checkpoint(target: str, option: str) -> Callable[[Path, Path], list[str]]:
    def make(scratch: Path, good: Path) -> list[str]:
        path = scratch / "special"
        if target == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to(target)
        if option == "--checkpoint":
            return _generate(path)
        return ["generate", CHECKPOINT_PRESET, "--tokenizer", str(path), "-p", "Hi", "-n", "1"]

    return make


CHECKPOINT_CASES = [
    _gguf("gguf-alignment-0", "GGUF general.alignment 0",
          lambda p: p.set("general.alignment", 4, 0), "expected a positive power of two"),
    _gguf("gguf-alignment-negative", "GGUF general.alignment -32 (as int32)",
          lambda p: p.set("general.alignment", 5, -32), "expected a positive power of two"),
    _gguf("gguf-misaligned", "a GGUF tensor offset 12 bytes off its alignment",
          lambda p: _shifted(p, "output_norm.weight", 12), "is not a multiple of the alignment"),
    _gguf("gguf-f16-over-f32", "a GGUF tensor declared F16 over F32 data",
          lambda p: _retyped(p, "output_norm.weight", "F16"), "does not match its data"),
    _gguf("gguf-i8-tensor", "a GGUF tensor of ggml type I8",
          lambda p: _retyped(p, "output_norm.weight", "I8"), "which gemmaforge does not"),
    _gguf("gguf-overlap", "two GGUF tensors over the same bytes",
          lambda p: setattr(p.tensor("blk.0.attn_norm.weight"), "offset",
                            p.tensor("blk.0.ffn_norm.weight").offset), "overlaps tensor"),
    _gguf("gguf-duplicate-name", "two GGUF tensors of the same name",
          lambda p: setattr(p.tensor("blk.0.attn_norm.weight"), "name",
                            "blk.0.ffn_norm.weight"), "appears twice"),
    _gguf("gguf-nan", "a GGUF norm of NaN", _nan_norm, "holds NaN or infinite values"),
    _gguf("gguf-metadata-count", "a GGUF claiming 5,000,000 metadata entries",
          lambda p: setattr(p, "n_metadata", 5_000_000), "over the 4096"),
    _gguf("gguf-truncated", "a GGUF cut 100 bytes short",
          lambda p: p.encode()[:-100], "truncated"),
    _gguf("gguf-no-tokenizer-scores", "a GGUF without tokenizer.ggml.scores",
          lambda p: p.drop("tokenizer.ggml.scores"), "tokenizer.ggml.scores"),
    _safetensors("safetensors-list-header", "a safetensors header that is a JSON list",
                 lambda h: list(h), "header is a JSON list"),
    _safetensors("safetensors-reversed-offsets", "safetensors data_offsets reversed",
                 lambda h: _with_offsets(h, *h[NORM]["data_offsets"][::-1]),
                 "expected [start, end] with 0 <= start <= end"),
    _safetensors("safetensors-negative-offsets", "safetensors data_offsets [-256, 0]",
                 lambda h: _with_offsets(h, -256, 0), "0 <= start <= end"),
    _safetensors("safetensors-short-offsets", "safetensors data_offsets spanning 8 bytes",
                 lambda h: _with_offsets(h, h[NORM]["data_offsets"][0],
                                         h[NORM]["data_offsets"][0] + 8), "span 8"),
    _safetensors("safetensors-dtype-mismatch", "a safetensors F32 tensor declared F16",
                 lambda h: {**h, NORM: {**h[NORM], "dtype": "F16"}}, "span 256"),
    _hf_folder("index-dotdot", "an index entry `../x`", lambda f: _index_entry(f, "../x"),
               "outside"),
    _hf_folder("index-absolute", "an index entry `/etc/passwd`",
               lambda f: _index_entry(f, "/etc/passwd"), "outside"),
    _hf_folder("config-heads-0-hf", "config.json num_attention_heads 0",
               lambda f: _edit_json(f / "config.json",
                                    lambda c: c.update(num_attention_heads=0)),
               "num_attention_heads is 0"),
    _hf_folder("config-layers-1e7-hf", "config.json num_hidden_layers 1e7 (ran to 11 GB)",
               lambda f: _edit_json(f / "config.json",
                                    lambda c: c.update(num_hidden_layers=1e7)),
               "num_hidden_layers is 10000000.0"),
    _hf_folder("config-layer-type", "config.json with an unknown layer type",
               lambda f: _edit_json(f / "config.json", lambda c: c.update(
                   layer_types=["weird_attention"] * c["num_hidden_layers"])),
               "layer type weird_attention"),
    BadInput("checkpoint-fifo", "a FIFO as --checkpoint", _special_checkpoint("fifo",
             "--checkpoint"), "a FIFO, not a regular file"),
    BadInput("checkpoint-dev-zero", "/dev/zero as --checkpoint",
             _special_checkpoint("/dev/zero", "--checkpoint"), "not a regular file"),
    BadInput("tokenizer-dev-zero", "/dev/zero as --tokenizer",
             _special_checkpoint("/dev/zero", "--tokenizer"), "not a regular file"),
]

CASES: list[BadInput] = [*ARTIFACT_CASES, *CHECKPOINT_CASES, *OPTION_CASES]


def snapshot(folder: Path) -> dict[str, int]:
    """Every path under `folder` (links not followed) with its size (-1 for folders)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        is_folder = path.is_dir() and not path.is_symlink()
        files[str(path.relative_to(folder))] = -1 if is_folder else path.lstat().st_size
    return files

"""Reading an artifact directory back: its manifest, config, tokenizer and reference weights."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from exporter import integrity
from exporter.artifact import TOKENIZER, WEIGHTS, read_manifest, verify_files
from exporter.manifest import Manifest
from model_zoo.checkpoints.native import native_tensor_map, read_tensors
from model_zoo.checkpoints.safetensors_reader import read_safetensors
from model_zoo.config import ModelConfig, config_from_dict
from model_zoo.errors import GemmaforgeError
from model_zoo.spm import GemmaTokenizer
from model_zoo.tokenizer import Tokenizer
from model_zoo.transformer import Params
from quantize.tensor import flatten_params, nest_params


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An exported model directory.

    Attributes:
      root: the directory.
      manifest: manifest.json, parsed and checked (exporter.manifest.Manifest).
      config: the model's architecture.
      files: the manifest's file entries by relative path.

    Runtimes reach the artifact's files through `file` and `folder` only: each path is
    confined to `root` and checked against the manifest's size and sha256 before use.
    """

    root: Path
    manifest: Manifest
    config: ModelConfig
    files: dict[str, integrity.FileEntry] = dataclasses.field(default_factory=dict)

    def file(self, relative: object) -> Path:
        """The verified path of one of the artifact's files (`relative` as the manifest
        names it)."""
        integrity.relative_path(relative, f"{self.root}: a manifest path")
        entry = self.files.get(str(relative))
        if entry is None:
            raise GemmaforgeError(f"{self.root}: {relative} is not among the manifest's files; "
                                  "the manifest is damaged: re-export the model")
        return integrity.verify_file(self.root, entry)

    def folder(self, relative: object) -> Path:
        """The verified path of a folder a runtime reads whole (onnxruntime-genai's): every
        manifest file under it checked, and no file there that the manifest does not list."""
        prefix = str(integrity.relative_path(relative, f"{self.root}: a manifest path"))
        path = integrity.confined(self.root, prefix, f"{self.root}: folder")
        for name, entry in self.files.items():
            if name.startswith(prefix + "/"):
                integrity.verify_file(self.root, entry)
        extra = integrity.unlisted_files(self.root, self.files, prefix)
        if extra:
            raise GemmaforgeError(f"{self.root}: {extra[0]} is not among the manifest's files "
                                  f"but lies in {prefix}/, which the runtime reads whole; "
                                  "remove it or re-export the model")
        return path

    @property
    def max_len(self) -> int:
        return self.manifest.max_len

    @property
    def buckets(self) -> tuple[int, ...]:
        return self.manifest.buckets

    def format(self, name: str) -> dict:
        section = self.manifest.formats.get(name)
        if section is None:
            raise GemmaforgeError(f"{self.root} has no {name} artifacts (it has "
                                  f"{', '.join(self.manifest.formats) or 'none'}); export "
                                  f"with --to {name}")
        return section

    def tokenizer(self) -> Tokenizer:
        """The bundled SentencePiece model (for byte-tokenized test models, its exact twin)."""
        tokenizer = GemmaTokenizer.from_file(self.file(TOKENIZER))
        if tokenizer.vocab_size > self.config.vocab_size:
            raise GemmaforgeError(
                f"{self.root}: the tokenizer has {tokenizer.vocab_size} pieces but the model "
                f"embeds {self.config.vocab_size}: it would produce ids the model cannot take; "
                "bundle the model's own tokenizer (re-export it)")
        return tokenizer

    @property
    def quantized(self) -> bool:
        return self.manifest.quantization is not None

    def weights(self, shardings: Params | None = None) -> Params:
        """The parameters the model was exported from: float32, or the quantized tree (integer
        values and scales as `quantize.QuantizedTensor`s) that its programs dequantize."""
        path = self.file(WEIGHTS)
        if self.quantized:
            return nest_params(self.config, read_tensors(path))
        return read_safetensors([path], self.config, str(path), shardings,
                                table=native_tensor_map(self.config))

    def flat_weights(self, shardings: Params | None = None) -> dict:
        """The stored tensors by dotted name, as the exported programs take them."""
        return flatten_params(self.weights(shardings))


def open_artifact(path: str | os.PathLike) -> Artifact:
    """The artifact at `path`, its manifest checked and every file's presence and size; each
    file's sha256 is checked when a runtime first reads it (`Artifact.file`)."""
    root = Path(path)
    manifest = read_manifest(root)
    files = verify_files(root, manifest, content=False)
    return Artifact(root, manifest, config_from_dict(manifest["config"]), files)


def verify_artifact(path: str | os.PathLike) -> dict:
    """Every file of the artifact at `path` against its manifest, without running anything:
    each listed file confined to the directory, a regular file of the recorded size and sha256,
    and no file that the manifest does not list (its report folder aside). Returns
    {"directory", "passed", "files": [{"path", "size", "status"}], "unlisted": [paths]}; the
    status is "ok" or the reason the file fails. A manifest that cannot be read is an error."""
    root = Path(path)
    entries = read_manifest(root).files_by_path
    rows = []
    for entry in entries.values():
        try:
            integrity.verify_file(root, entry)
            status = "ok"
        except GemmaforgeError as error:
            status = str(error)
        rows.append({"path": entry.path, "size": entry.size, "status": status})
    unlisted = integrity.unlisted_files(root, entries)
    passed = all(row["status"] == "ok" for row in rows) and not unlisted
    return {"directory": str(root), "passed": passed, "files": rows, "unlisted": unlisted}

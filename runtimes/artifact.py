"""Reading an artifact directory back: its manifest, config, tokenizer and reference weights."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from exporter.artifact import TOKENIZER, WEIGHTS, read_manifest, verify_files
from model_zoo.checkpoints.native import native_tensor_map, read_tensors
from model_zoo.checkpoints.safetensors_reader import read_safetensors
from model_zoo.config import ModelConfig, config_from_dict
from model_zoo.errors import GemmaforgeError
from model_zoo.quantized import flatten_params, nest_params
from model_zoo.spm import GemmaTokenizer
from model_zoo.tokenizer import Tokenizer
from model_zoo.transformer import Params


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An exported model directory.

    Attributes:
      root: the directory.
      manifest: manifest.json, parsed.
      config: the model's architecture.
    """

    root: Path
    manifest: dict
    config: ModelConfig

    @property
    def max_len(self) -> int:
        return int(self.manifest["max_len"])

    @property
    def buckets(self) -> tuple[int, ...]:
        return tuple(self.manifest["buckets"])

    def format(self, name: str) -> dict:
        section = self.manifest["formats"].get(name)
        if section is None:
            raise GemmaforgeError(f"{self.root} has no {name} artifacts (it has "
                                  f"{', '.join(self.manifest['formats']) or 'none'}); export "
                                  f"with --to {name}")
        return section

    def tokenizer(self) -> Tokenizer:
        """The bundled SentencePiece model (for byte-tokenized test models, its exact twin)."""
        return GemmaTokenizer.from_file(self.root / TOKENIZER)

    @property
    def quantized(self) -> bool:
        return "quantization" in self.manifest

    def weights(self, shardings: Params | None = None) -> Params:
        """The parameters the model was exported from: float32, or the quantized tree (integer
        values and scales as `QArray`s) that its programs dequantize."""
        if self.quantized:
            return nest_params(read_tensors(self.root / WEIGHTS))
        return read_safetensors([self.root / WEIGHTS], self.config, str(self.root / WEIGHTS),
                                shardings, table=native_tensor_map(self.config))

    def flat_weights(self, shardings: Params | None = None) -> dict:
        """The stored tensors by dotted name, as the exported programs take them."""
        return flatten_params(self.weights(shardings))


def open_artifact(path: str | os.PathLike) -> Artifact:
    root = Path(path)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    return Artifact(root, manifest, config_from_dict(manifest["config"]))

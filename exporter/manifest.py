"""The manifest as typed records: what each format's writer returns (`FormatResult`), and the
artifact's `Manifest`, built from those results and written as manifest.json.

`Manifest.to_json` is the file's content, key for key and in the same order as every
FORMAT_VERSION 1 artifact; `Manifest.from_json` reads it back checked, each field refused with
one line when it is missing or mistyped (a manifest can be written by anyone). A `Manifest` also
reads as the JSON object it is written as (`manifest["buckets"]`), for callers that index the
file's keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from exporter import integrity
from exporter.integrity import FileEntry
from model_zoo.errors import GemmaforgeError

FORMAT_VERSION = 1
NOT_VALIDATED = {"status": "not run"}

JSON = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class FormatResult:
    """What one format's writer wrote.

    Attributes:
      files: the files it wrote, relative to the artifact directory.
      entry_points: the programs it holds (entry points, signatures or graphs) by name.
      tools: the distributions that made them, whose versions the manifest records.
      section: the format's entry in the manifest (`formats.<name>`), its own fields.
      timings: seconds its steps took; they vary from run to run, so the manifest keeps them
        apart, in its `timings` section.
    """

    files: tuple[str, ...]
    entry_points: tuple[str, ...]
    tools: tuple[str, ...]
    section: JSON
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)


def files_under(root: Path, directory: Path) -> tuple[str, ...]:
    """The files a writer left in its `directory`, relative to the artifact `root`."""
    return tuple(str(path.relative_to(root)) for path in sorted(directory.rglob("*"))
                 if path.is_file())


@dataclasses.dataclass(frozen=True)
class TokenizerEntry:
    """The bundled tokenizer: a SentencePiece model (the byte tokenizer's exact twin for test
    models) and the ids the runtimes start and stop on."""

    kind: str
    file: str
    bos_id: int
    eos_id: int
    stop_ids: tuple[int, ...]
    vocab_size: int

    def to_json(self) -> dict:
        return {"kind": self.kind, "file": self.file, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "stop_ids": list(self.stop_ids),
                "vocab_size": self.vocab_size}

    @classmethod
    def from_json(cls, data: JSON, where: str) -> TokenizerEntry:
        ids = {key: _int(data.get(key), f"{where}.{key}") for key in
               ("bos_id", "eos_id", "vocab_size")}
        stops = data.get("stop_ids")
        if not isinstance(stops, list):
            raise GemmaforgeError(f"{where}.stop_ids must be a list of token ids; re-export "
                                  "the model")
        return cls(_text(data.get("kind"), f"{where}.kind"),
                   _text(data.get("file"), f"{where}.file"), ids["bos_id"], ids["eos_id"],
                   tuple(_int(i, f"{where}.stop_ids") for i in stops), ids["vocab_size"])


@dataclasses.dataclass(frozen=True)
class Quantization:
    """The recipe the weights were quantized with, and each tensor's grid (quantize.specs_of),
    which the ONNX and LiteRT writers lower."""

    recipe: str
    tensors: Mapping[str, JSON]

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "tensors": dict(self.tensors)}

    @classmethod
    def from_json(cls, data: object, where: str) -> Quantization:
        if not isinstance(data, dict) or not isinstance(data.get("tensors"), dict):
            raise GemmaforgeError(f"{where} must be an object with recipe and tensors; "
                                  "re-export the model")
        for name, spec in data["tensors"].items():
            if not isinstance(spec, dict):
                raise GemmaforgeError(f"{where}.tensors.{name} must be an object")
        return cls(_text(data.get("recipe"), f"{where}.recipe"), data["tensors"])


@dataclasses.dataclass(frozen=True)
class Manifest(Mapping):
    """An artifact's manifest.json.

    Attributes:
      preset: the model's name; config: its ModelConfig as a dict (model_zoo.config).
      weights_source: where the weights came from; recipe: the quantization recipe ("f32":
        none); precision: what the tolerances are chosen by ("float32", "quantized <recipe>").
      max_len, buckets, fused: the trace options every format was written with.
      tokenizer: the bundled tokenizer.
      formats: each format's section (`FormatResult.section`), in FORMATS order.
      quantization: the quantized tensors' grids (None for float32 weights).
      tools: the versions of the tools that wrote the artifact.
      files: every file but the manifest and the reports, with size and sha256.
      validation: the last validation's summary ({"status": "not run"} until there is one).
      timings: what varies from run to run (seconds), kept apart from everything else.
    """

    preset: str
    config: JSON
    weights_source: str
    recipe: str
    precision: str
    max_len: int
    buckets: tuple[int, ...]
    fused: bool
    tokenizer: TokenizerEntry
    formats: Mapping[str, JSON]
    quantization: Quantization | None
    tools: Mapping[str, str]
    files: tuple[FileEntry, ...]
    validation: JSON = dataclasses.field(default_factory=lambda: dict(NOT_VALIDATED))
    timings: JSON = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        """manifest.json's object (the key order is part of the byte-reproducible file)."""
        data = {"format_version": self.format_version, "preset": self.preset,
                "config": dict(self.config), "weights_source": self.weights_source,
                "recipe": self.recipe, "precision": self.precision, "max_len": self.max_len,
                "buckets": list(self.buckets), "fused": self.fused,
                "tokenizer": self.tokenizer.to_json(), "formats": dict(self.formats)}
        if self.quantization is not None:
            data["quantization"] = self.quantization.to_json()
        data.update(tools=dict(self.tools),
                    files=[dataclasses.asdict(entry) for entry in self.files],
                    validation=dict(self.validation), timings=dict(self.timings))
        return data

    @classmethod
    def from_json(cls, data: object, where: str) -> Manifest:
        """The manifest in `data` (parsed JSON from `where`), every field checked."""
        data = integrity.check_manifest(data, where)
        texts = {key: _text(data.get(key), f"{where}: {key}") for key in
                 ("preset", "weights_source", "recipe", "precision")}
        if not isinstance(data.get("fused"), bool):
            raise GemmaforgeError(f"{where}: fused must be true or false; re-export the model")
        tools, validation, timings = (_object(data, key, where) for key in
                                      ("tools", "validation", "timings"))
        quantization = data.get("quantization")
        return cls(
            config=data["config"], max_len=data["max_len"], buckets=tuple(data["buckets"]),
            fused=data["fused"], tokenizer=TokenizerEntry.from_json(data["tokenizer"],
                                                                    f"{where}: tokenizer"),
            formats=data["formats"],
            quantization=(None if quantization is None
                          else Quantization.from_json(quantization, f"{where}: quantization")),
            tools=tools, validation=validation, timings=timings,
            files=tuple(integrity.file_entries_of(data, where).values()),
            format_version=data["format_version"], **texts)

    def with_validation(self, summary: JSON) -> Manifest:
        return dataclasses.replace(self, validation=dict(summary))

    @property
    def files_by_path(self) -> dict[str, FileEntry]:
        return {entry.path: entry for entry in self.files}

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise GemmaforgeError(f"{where} must be a string, got {value!r}; re-export the model")
    return value


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GemmaforgeError(f"{where} must be an integer, got {value!r}; re-export the model")
    return value


def _object(data: JSON, key: str, where: str) -> dict:
    if not isinstance(data.get(key), dict):
        raise GemmaforgeError(f"{where}: '{key}' is missing or not an object; re-export the "
                              "model")
    return data[key]

"""Trace a Gemma model into pure entry points (prefill_<T>, decode, symbolic prefill) and write
an artifact directory of StableHLO, ONNX and LiteRT programs: `export(model, out, ...)`."""

from exporter.artifact import read_manifest
from exporter.manifest import FormatResult, Manifest
from exporter.pipeline import WRITERS, export
from exporter.request import (
    FORMATS,
    ExportRequest,
    Format,
    OnnxProfile,
    parse_buckets,
    parse_formats,
    parse_platforms,
)
from exporter.trace import DEFAULT_BUCKETS, EntryPoint, TraceOptions, entry_function

__all__ = [
    "DEFAULT_BUCKETS",
    "FORMATS",
    "WRITERS",
    "EntryPoint",
    "ExportRequest",
    "Format",
    "FormatResult",
    "Manifest",
    "OnnxProfile",
    "TraceOptions",
    "entry_function",
    "export",
    "parse_buckets",
    "parse_formats",
    "parse_platforms",
    "read_manifest",
]

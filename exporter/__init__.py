"""Trace a Gemma model into pure entry points (prefill_<T>, decode, symbolic prefill) and write
artifact directories: StableHLO now; ONNX and LiteRT writers follow the same trace."""

from exporter.artifact import read_manifest
from exporter.pipeline import FORMATS, export, parse_formats
from exporter.stablehlo import parse_platforms
from exporter.trace import DEFAULT_BUCKETS, EntryPoint, TraceOptions, entry_function

__all__ = [
    "DEFAULT_BUCKETS",
    "FORMATS",
    "EntryPoint",
    "TraceOptions",
    "entry_function",
    "export",
    "parse_formats",
    "parse_platforms",
    "read_manifest",
]

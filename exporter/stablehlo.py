"""StableHLO artifacts: one `jax.export` per entry point, serialized, with its MLIR text.

Parameters are arguments (`weights`, the artifact's weights.safetensors), so the programs are
small, one weights file serves every entry point, and sharded parameters keep their shardings.
Several platforms (`cpu`, `cuda`, `tpu`) lower into one module with a platform index argument;
composites are then traced as their decomposition (jax-ml/jax#40486), as they are for the
symbolic-length prefill.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
from jax import export as jax_export
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from exporter.manifest import FormatResult, files_under
from exporter.request import ExportPlan, ExportRequest, StoredWeights
from exporter.trace import (
    EntryPoint,
    TraceOptions,
    entry_function,
    input_specs,
    kv_names,
)
from model_zoo.composites import COMPOSITE_NAMES
from model_zoo.config import ModelConfig
from model_zoo.lowering import Lowering
from model_zoo.sharding import partition_specs
from model_zoo.transformer import weight_specs
from model_zoo.tree import flatten, path_name

DIRECTORY = "stablehlo"
_COMPOSITE = re.compile(r'stablehlo\.composite "([\w.]+)"')


def composites_in(mlir_text: str) -> dict[str, int]:
    """How many times each fused op appears in a module."""
    counts: dict[str, int] = {}
    for name in _COMPOSITE.findall(mlir_text):
        counts[name] = counts.get(name, 0) + 1
    return {name: counts[name] for name in COMPOSITE_NAMES if name in counts}


def _shape(shape) -> list:
    return [d if isinstance(d, int) else str(d) for d in shape]


def _tensor_entries(names: list[str], avals) -> list[dict]:
    return [{"name": n, "shape": _shape(a.shape), "dtype": str(a.dtype)}
            for n, a in zip(names, avals, strict=True)]


def export_entry(config: ModelConfig, entry: EntryPoint, options: TraceOptions,
                 platforms: tuple[str, ...], mesh: Mesh | None,
                 weights: dict[str, jax.ShapeDtypeStruct] | None = None) -> jax_export.Exported:
    """`jax.export` of one entry point with weights (dotted name -> spec; default the float32
    parameters, else the stored tensors of a quantized tree) as its first argument."""
    # Composites fail under symbolic shapes and multi-platform lowering (jax-ml/jax#40486).
    lowering = Lowering(options.composites)
    if entry.symbolic or len(platforms) > 1:
        lowering = lowering.without_composites()
    function = entry_function(config, entry, lowering)
    length = None
    if entry.symbolic:
        (length,) = jax_export.symbolic_shape("T", constraints=(f"T <= {options.max_len}",))
    tokens, positions, cache = input_specs(config, entry, options.max_len, length)
    weights = weights or weight_specs(config)
    # keep_unused: prefill never reads the final norm or the last layer's MLP, and a uniform
    # signature lets every consumer pass the same weight list to every entry point.
    jitted = jax.jit(function, keep_unused=True)
    if mesh is not None:
        specs = {path_name(p): s for p, s in flatten(partition_specs(config, mesh))}
        replicated = NamedSharding(mesh, PartitionSpec())
        weight_shardings = {name: NamedSharding(mesh, specs[name]) for name in weights}
        cache_shardings = {name: replicated for name in cache}
        out_shardings = ((replicated, cache_shardings) if entry.returns_logits
                         else cache_shardings)
        jitted = jax.jit(function, in_shardings=(weight_shardings, replicated, replicated,
                                                 cache_shardings),
                         out_shardings=out_shardings, keep_unused=True)
    return jax_export.export(jitted, platforms=platforms)(weights, tokens, positions, cache)


def write_stablehlo(plan: ExportPlan, stored: StoredWeights, root: Path,
                    request: ExportRequest) -> FormatResult:
    """Writes root/stablehlo/: one program per entry point, for `request.platforms` (sharded
    on `request.mesh`), taking the stored weights (a quantized tree is dequantized in the
    programs)."""
    config, options, platforms, mesh = plan.traced, plan.options, request.platforms, request.mesh
    weights = stored.specs
    directory = root / DIRECTORY
    directory.mkdir()
    weight_names = list(weights or weight_specs(config))
    cache_names = kv_names(config)
    entries = {}
    for entry in options.entry_points():
        exported = export_entry(config, entry, options, platforms, mesh, weights)
        serialized = directory / f"{entry.name}.jax_exported"
        serialized.write_bytes(exported.serialize())
        text = exported.mlir_module()
        (directory / f"{entry.name}.mlir").write_text(text)
        # jax flattens the cache dict in sorted key order; record the names in that order.
        flat_inputs = [*sorted(weight_names), "tokens", "input_pos", *sorted(cache_names)]
        outputs = (["logits"] if entry.returns_logits else []) + sorted(cache_names)
        entries[entry.name] = {
            "file": f"{DIRECTORY}/{serialized.name}",
            "mlir": f"{DIRECTORY}/{entry.name}.mlir",
            "tokens": entry.tokens if entry.tokens is not None else "T",
            "symbolic": entry.symbolic,
            "returns_logits": entry.returns_logits,
            "inputs": _tensor_entries(flat_inputs, exported.in_avals)[len(weight_names):],
            "outputs": _tensor_entries(outputs, exported.out_avals),
            "fused_ops": composites_in(text),
            "nr_devices": exported.nr_devices,
        }
    section = {
        "platforms": list(platforms),
        "params": "arguments",
        "weights": "weights.safetensors",
        "weight_order": sorted(weight_names),
        "entry_points": entries,
    }
    if mesh is not None:
        section["mesh"] = {name: int(size) for name, size in mesh.shape.items()}
        section["shardings"] = {path_name(p): [a for a in spec] for p, spec in
                                flatten(partition_specs(config, mesh))}
    return FormatResult(files_under(root, directory), tuple(entries), (), section)

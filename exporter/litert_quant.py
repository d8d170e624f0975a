"""Quantized LiteRT models: the float .tflite written from the dequantized weights (the
quantized reference's own float32 values), then quantized by ai-edge-quantizer onto the same
grid, because litert-converter has no way to take our integers and scales as they are.

The scheme is chosen by the recipe's projections (ai-edge-quantizer's rules select operations,
not parameters, so every projection takes the same one):

  int8  per channel, symmetric: int8 tensors; re-quantizing q * s with the same rule
        (scale = max |w| / 127 per channel) finds the same scale and the same q: our numbers,
        read back in the tests. Weight-only (a DEQUANTIZE before each FULLY_CONNECTED /
        EMBEDDING_LOOKUP, float32 compute, as the reference), or for a recipe with dynamic
        int8 activations (int8-dyn) dynamic-range FULLY_CONNECTED: XNNPACK rounds each row of
        activations to int8 at run time with a scale and a zero point, where the reference
        (ModelConfig.activation_quant) takes a scale alone; the LiteRT model is converted from
        the float-activation graph and validated to the activation-rounding tolerance.
  int4  symmetric blocks of 32 / 64 / 128 inputs, which XNNPACK runs only as dynamic-range
        FULLY_CONNECTED: the activations are rounded to int8 at run time (per row, by the
        kernel), and the block scales have bfloat16's precision (in float16 tensors).
        ai-edge-quantizer lays the tensors out; then our values and our scales, rounded to
        bfloat16 (`stored_scales`), are written over its own (`write_blockwise`), since its
        re-rounding would move GPTQ's blocks, whose largest value need not reach 7. The LM
        head (the int8 table) is dynamic int8 per channel, and the lookup reads that table.
        Another computation than the weight-only reference: validated to the
        activation-rounding tolerance (runtimes.tolerances), like ONNX at accuracy level 4.

The tied table is one EMBEDDING_LOOKUP + LM-head tensor (`composites.embedding_lookup`),
quantized once, int8 per channel in every scheme. A dynamic-range model's lookup reads the int8
rows itself, with no DEQUANTIZE: the Interpreter's XNNPACK delegate folds a DEQUANTIZE of a
constant away, but the LiteRT-LM engine evidently runs it at every step (gemma3-270m int4
decoded at 0.5 tok/s in the engine with a DEQUANTIZEd table, 31 without; weight-only int8,
DEQUANTIZE everywhere, at 0.25 against 10.7 for float32: `python -m benchmarks
quantized-litert`).

The `source` recipe's grids (a GGUF's int8 / 4-bit blocks of 16 and 32, float zero points) are
held by none of LiteRT's schemes exactly (int8 is per channel; blockwise scales are bfloat16):
those tensors stay float32, the nearest representation that holds them exactly (FLOAT_HOLDER,
recorded in the manifest).

Not lowered (a clear error before anything is written): asymmetric grids, int8 blocks, int4
per channel or in blocks of 16, float16 storage, and projections on different schemes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
from pathlib import Path

import ml_dtypes
import numpy as np

from model_zoo.errors import GemmaforgeError
from model_zoo.layers import LM_HEAD_EQUATION, is_matrix
from model_zoo.transformer import EMBEDDING as TABLE

FLOAT_HOLDER = {"scheme": "float32: LiteRT's int8 per channel holds none of the checkpoint's "
                "block grids exactly; float32 is the nearest exact holder",
                "quantized_tensors": 0}
INT4_BLOCKS = (32, 64, 128)  # ai-edge-quantizer's blockwise granularities that our specs have
# ai-edge-quantizer matches its rules against an operation's output name: the LM head's
# FULLY_CONNECTED writes the decode signature's `logits`, or (soft-capped, Gemma 2) the einsum's.
LM_HEAD_SCOPE = f"logits|{re.escape(LM_HEAD_EQUATION)}"
# What XNNPACK's dynamic-range kernels do with the activations (the reference's int8-dynamic is
# per token, symmetric: the same granularity, another zero point).
RUN_TIME_ACTIVATIONS = "int8, per row (asymmetric) at run time, by XNNPACK"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the LiteRT model quantizes: `scheme` "int8" or "int4" (None: nothing), the
    projections' int4 `block`, whether its matmuls are `dynamic` (int8 activations), and how
    many tensors of each kind it stores."""

    scheme: str | None
    block: int | None = None
    dynamic: bool = False
    int8_tensors: int = 0
    int4_tensors: int = 0


def _grid(spec: dict) -> str:
    return (f"int{spec['bits']} "
            f"{'blocks of ' + str(spec['block']) if spec.get('block') else 'per channel'}"
            f"{'' if spec.get('symmetric', True) else ' asymmetric'}")


def _scheme(name: str, spec: dict) -> tuple[str, int | None, bool] | None:
    """(scheme, int4 block, dynamic int8 activations) LiteRT holds the tensor in, None for
    float32; a clear error for a grid the LiteRT export does not lower."""
    if spec.get("source"):  # the checkpoint's own grid (or the recipe's "keep it" marker)
        return None
    if "bits" not in spec:
        if spec.get("dtype", "float32") == "float32":
            return None
        raise GemmaforgeError(f"LiteRT export does not store {spec['dtype']} weights ({name}); "
                              "use int8 or int4 for --to litert")
    symmetric, dynamic = spec.get("symmetric", True), spec.get("activations") is not None
    if spec["bits"] == 8 and spec.get("block") is None and symmetric:
        return "int8", None, dynamic
    if name != TABLE and spec["bits"] == 4 and spec.get("block") in INT4_BLOCKS and symmetric:
        return "int4", spec["block"], True
    raise GemmaforgeError(f"LiteRT export lowers int8 per-channel and int4 blockwise "
                          f"({'/'.join(map(str, INT4_BLOCKS))}) symmetric weights, with an int8 "
                          f"table, not {name}'s {_grid(spec)} (ai-edge-quantizer would re-round "
                          "it); use int8 or int4 for --to litert, or export it to stablehlo,onnx")


def check_recipe(tensors: dict[str, dict]) -> Plan:
    """The LiteRT plan for the manifest's per-tensor specs; a clear error for any tensor it
    cannot hold, or projections that do not all take one scheme."""
    schemes = {name: _scheme(name, spec) for name, spec in tensors.items()
               if is_matrix(name)}  # vectors stay float32
    table = schemes.pop(TABLE, None)
    layers = set(schemes.values())
    if len(layers) > 1:
        kinds = sorted(str(s[0] if s else "float32") + (f" block {s[1]}" if s and s[1] else "")
                       for s in layers)
        raise GemmaforgeError(f"LiteRT export quantizes every projection alike "
                              f"(ai-edge-quantizer selects operations, not parameters); this "
                              f"recipe mixes {', '.join(kinds)}: use one spec for all layers")
    layer = layers.pop() if layers else None
    if layer is None and table is None:
        return Plan(None)
    if layer is not None and layer[0] == "int4":
        if table is None:
            raise GemmaforgeError("LiteRT int4 export needs the table int8 per channel (its LM "
                                  "head runs with the int4 layers' int8 activations); the "
                                  "recipe keeps it float32")
        return Plan("int4", layer[1], True, int8_tensors=1, int4_tensors=len(schemes))
    if layer is None:
        raise GemmaforgeError("LiteRT export quantizes the table with the projections; this "
                              "recipe quantizes the table alone: quantize the layers as well")
    if table is None:
        raise GemmaforgeError("LiteRT export quantizes the table with the projections (one "
                              "tensor serves the lookup and the LM head); this recipe keeps it "
                              "float32: quantize it int8 as well")
    return Plan("int8", dynamic=layer[2], int8_tensors=len(schemes) + 1)


def _recipe(plan: Plan):
    from ai_edge_quantizer import recipe_manager
    from ai_edge_quantizer.recipe import QuantGranularity, TFLOperationName

    manager = recipe_manager.RecipeManager()
    if plan.scheme == "int4":
        manager.add_dynamic_config(regex=".*", operation_name=TFLOperationName.FULLY_CONNECTED,
                                   num_bits=4,
                                   granularity=QuantGranularity[f"BLOCKWISE_{plan.block}"])
        # The later rule wins for the LM head: the int8 table, shared with the lookup.
        manager.add_dynamic_config(regex=LM_HEAD_SCOPE,
                                   operation_name=TFLOperationName.FULLY_CONNECTED, num_bits=8,
                                   granularity=QuantGranularity.CHANNELWISE)
    elif plan.dynamic:
        manager.add_dynamic_config(regex=".*", operation_name=TFLOperationName.FULLY_CONNECTED,
                                   num_bits=8, granularity=QuantGranularity.CHANNELWISE)
    else:
        manager.add_weight_only_config(regex=".*",
                                       operation_name=TFLOperationName.FULLY_CONNECTED,
                                       num_bits=8, granularity=QuantGranularity.CHANNELWISE)
    # A dynamic plan's lookup reads the int8 table itself (no DEQUANTIZE, which the LiteRT-LM
    # engine would run over the whole table at every step).
    lookup = manager.add_dynamic_config if plan.dynamic else manager.add_weight_only_config
    lookup(regex=".*", operation_name=TFLOperationName.EMBEDDING_LOOKUP, num_bits=8,
           granularity=QuantGranularity.CHANNELWISE)
    return manager.get_quantization_recipe()


def quantize_tflite(path: Path, tensors: dict[str, dict], quantized: dict) -> dict:
    """Quantizes the float `path` in place onto the schemes of `tensors` (the manifest's
    per-tensor specs), holding the values and scales of `quantized` (name -> QuantizedTensor);
    returns the manifest's record of it."""
    from ai_edge_quantizer import quantizer

    from exporter.tflite_inspect import blockwise_weights, quantized_weights

    plan = check_recipe(tensors)
    logging.getLogger("absl").setLevel(logging.ERROR)
    engine = quantizer.Quantizer(os.fspath(path))
    engine.load_quantization_recipe(_recipe(plan))
    # Its progress bars and summary would interleave with ours.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = engine.quantize()
    data = bytearray(result.quantized_model)
    del result, engine
    theirs = write_blockwise(data, quantized) if plan.scheme == "int4" else None
    int8 = len(quantized_weights(data))
    int4 = len(blockwise_weights(data)) if plan.scheme == "int4" else 0
    # Every quantized matrix once (the table serves the lookup and the head), none float.
    if (int8, int4) != (plan.int8_tensors, plan.int4_tensors):
        raise GemmaforgeError(f"ai-edge-quantizer stored {int8} int8 and {int4} int4 matrices "
                              f"where the recipe quantizes {plan.int8_tensors} and "
                              f"{plan.int4_tensors}; the LiteRT model would not be the recipe's")
    quantized_file = Path(f"{path}.quantized")
    quantized_file.write_bytes(data)
    del data
    os.replace(quantized_file, path)
    if plan.scheme == "int4":
        return {"tool": "ai-edge-quantizer", "scheme": f"dynamic-range int4 blocks of "
                f"{plan.block} (scales: ours, rounded to bfloat16) for the projections, dynamic "
                "int8 per channel for the LM head, an int8 lookup of the same table",
                "activations": RUN_TIME_ACTIVATIONS, "quantized_tensors": int8 + int4,
                "quantizer_rounding": theirs}
    if plan.dynamic:
        return {"tool": "ai-edge-quantizer", "scheme": "dynamic-range int8 per channel for "
                "every FULLY_CONNECTED, an int8 lookup of the same table",
                "activations": RUN_TIME_ACTIVATIONS, "quantized_tensors": int8}
    return {"tool": "ai-edge-quantizer", "scheme": "weight-only int8 per channel, DEQUANTIZE "
            "then float32 FULLY_CONNECTED / EMBEDDING_LOOKUP", "quantized_tensors": int8}


def stored_scales(scales: np.ndarray) -> np.ndarray:
    """Block scales as LiteRT int4 holds them: float16 tensors whose values XNNPACK's kernels
    take as bfloat16, so rounded to bfloat16's 8 significant bits first (ai-edge-quantizer's
    own rule), which float16 then holds exactly."""
    return scales.astype(ml_dtypes.bfloat16).astype(np.float16)


def write_blockwise(data: bytearray, quantized: dict) -> dict:
    """Writes our int4 values and bfloat16-rounded scales over each blockwise tensor of the
    flatbuffer `data`, found by what it holds: the one of our weights of its shape whose
    dequantization its own lies within half a step of. Returns how far ai-edge-quantizer's own
    numbers were from those: values that differed, and the largest relative difference of a
    scale from ours as stored (`stored_scales`)."""
    from exporter.tflite_inspect import blockwise_weights
    from quantize.spec import pack4

    candidates: dict[tuple[int, int], list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for name, value in quantized.items():
        if getattr(value, "spec", None) is not None and value.spec.bits == 4:
            values, scales = value.values.T, value.scales.T  # [out, in], [out, in / block]
            candidates.setdefault(values.shape, []).append((name, values, scales))
    differing = total = 0
    scale_difference = 0.0
    for tensor in blockwise_weights(data).values():
        block = tensor["block"]
        theirs = (tensor["values"][0].reshape(-1, block)
                  * tensor["scales"][0].astype(np.float32)[:, None])
        best, error = None, np.inf
        for name, values, scales in candidates.get(tuple(tensor["shape"]), []):
            ours = values[0].reshape(-1, block) * scales[0][:, None]
            distance = float(np.max(np.abs(ours - theirs) / scales[0][:, None]))
            if distance < error:
                best, error = (name, values, scales), distance
        if best is None or error > 0.5 + 1e-2:
            raise GemmaforgeError(f"ai-edge-quantizer's int4 tensor {tensor['name']} is none of "
                                  "the recipe's weights; the LiteRT model would not hold our "
                                  "numbers")
        _, values, scales = best
        rounded = stored_scales(scales)
        differing += int(np.count_nonzero(tensor["values"] != values))
        total += values.size
        scale_difference = max(scale_difference, float(np.max(
            np.abs(tensor["scales"].astype(np.float32) - rounded) / rounded.astype(np.float32))))
        start, size = tensor["values_region"]
        data[start:start + size] = pack4(values.reshape(-1)).tobytes()
        start, size = tensor["scales_region"]
        data[start:start + size] = rounded.tobytes()
    return {"values_differing": differing, "values": total,
            "max_scale_difference": scale_difference}

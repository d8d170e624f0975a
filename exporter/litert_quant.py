"""Quantized LiteRT models: the float .tflite written from the dequantized weights (the
quantized reference's own float32 values), then quantized by ai-edge-quantizer onto the same
grid, because litert-converter has no way to take our integers and scales as they are.

int8 per channel, symmetric, is lowered weight-only: int8 tensors and a DEQUANTIZE before each
FULLY_CONNECTED / EMBEDDING_LOOKUP (float32 compute, as the reference). Re-quantizing q * s with
the same rule (scale = max |w| / 127 per channel) finds the same scale and the same q: our
numbers, read back in the tests. The tied table is one EMBEDDING_LOOKUP + LM-head tensor
(`composites.embedding_lookup`), quantized once.

The `source` recipe's grids (a GGUF's int8 / 4-bit blocks of 16 and 32, float zero points) are
held by none of LiteRT's weight-only schemes (int8 per channel): those tensors stay float32, the
nearest representation that holds them exactly (FLOAT_HOLDER, recorded in the manifest).

Not lowered (a clear error before anything is written), as measured with ai-edge-quantizer 0.10:
  - int4: it has no weight-only int4 (the config is silently skipped); its dynamic int4 keeps
    float16 block scales (ours rounded) and quantizes activations to int8 at run time, and
    combined with the weight-only int8 table it crashes (TypeError in insert_dequant);
  - asymmetric grids, int8 blocks, float16 storage: LiteRT would re-round them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from model_zoo.errors import GemmaforgeError

FLOAT_HOLDER = {"scheme": "float32: LiteRT's int8 per channel holds none of the checkpoint's "
                "block grids exactly; float32 is the nearest exact holder",
                "quantized_tensors": 0}


def check_spec(name: str, spec: dict) -> bool:
    """True for a tensor LiteRT holds as int8 per channel, False for one that stays float32;
    a clear error for a grid the LiteRT export does not lower."""
    if spec.get("source"):  # the checkpoint's own grid (or the recipe's "keep it" marker)
        return False
    if "bits" not in spec:
        if spec.get("dtype", "float32") == "float32":
            return False
        raise GemmaforgeError(f"LiteRT export does not store {spec['dtype']} weights ({name}); "
                              "use int8 for --to litert")
    if spec["bits"] == 8 and spec.get("block") is None and spec.get("symmetric", True):
        return True
    grid = (f"int{spec['bits']} {'blocks of ' + str(spec['block']) if spec.get('block') else ''}"
            f"{'' if spec.get('symmetric', True) else ' asymmetric'}").strip()
    raise GemmaforgeError(f"LiteRT export lowers int8 per-channel symmetric weights only, not "
                          f"{name}'s {grid} (ai-edge-quantizer would re-round it); use int8 "
                          "for --to litert, or export int4 to stablehlo,onnx")


def check_recipe(tensors: dict[str, dict]) -> int:
    """How many tensors the LiteRT model quantizes; a clear error for any it cannot hold."""
    return sum(check_spec(name, spec) for name, spec in tensors.items())


def _recipe():
    from ai_edge_quantizer import recipe_manager
    from ai_edge_quantizer.recipe import QuantGranularity, TFLOperationName

    manager = recipe_manager.RecipeManager()
    for operation in (TFLOperationName.FULLY_CONNECTED, TFLOperationName.EMBEDDING_LOOKUP):
        manager.add_weight_only_config(regex=".*", operation_name=operation, num_bits=8,
                                       granularity=QuantGranularity.CHANNELWISE)
    return manager.get_quantization_recipe()


def quantize_tflite(path: Path, tensors: dict[str, dict]) -> dict:
    """Quantizes the float `path` in place onto the schemes of `tensors` (the manifest's
    per-tensor specs); returns the manifest's record of it."""
    from ai_edge_quantizer import quantizer

    from exporter.tflite_inspect import quantized_weights

    expected = check_recipe(tensors)
    logging.getLogger("absl").setLevel(logging.ERROR)
    engine = quantizer.Quantizer(os.fspath(path))
    engine.load_quantization_recipe(_recipe())
    # Its progress bars and summary would interleave with ours.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = engine.quantize()
    quantized = Path(f"{path}.quantized")
    quantized.write_bytes(result.quantized_model)
    del result, engine
    found = quantized_weights(quantized)
    # Every quantized matrix once (the table serves the lookup and the head), none float.
    if len(found) != expected:
        quantized.unlink()
        raise GemmaforgeError(f"ai-edge-quantizer stored {len(found)} int8 matrices where the "
                              f"recipe quantizes {expected}; the LiteRT model would not be the "
                              "recipe's")
    os.replace(quantized, path)
    return {"tool": "ai-edge-quantizer", "scheme": "weight-only int8 per channel, DEQUANTIZE "
            "then float32 FULLY_CONNECTED / EMBEDDING_LOOKUP", "quantized_tensors": len(found)}

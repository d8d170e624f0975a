"""Weight matrices enter litert-converter as placeholders and are written into the finished
.tflite afterwards: the layouts are read right, every stored value is the exported one, and a
converter that computes a new constant from a placeholder is caught, not shipped."""

import dataclasses
import mmap

import litert_converter.schema_py_generated as schema
import numpy as np
import pytest

import exporter.litert
import model_zoo as mz
from exporter import export
from exporter.tflite_weights import _layout, buffer_region, placeable
from model_zoo.checkpoints.native import weight_offsets
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import weight_specs
from runtimes.validation import validate_artifact

# tiny-gemma2 with head_dim 24, so that N * H (96) differs from D (64) and every matrix,
# q_proj and o_proj included, can go in as a placeholder.
WIDE_HEADS = dataclasses.replace(mz.get_preset("tiny-gemma2"), name="tiny-gemma2-h24",
                                 head_dim=24)


def test_placeable_shapes():
    assert placeable((512, 64))
    assert placeable((64, 2, 24)) and placeable((4, 24, 64))
    assert not placeable((64,))  # vectors go in with their values
    # [64, 4, 16] transposed at k=1 is [64, 64]: the same shape as the weight as it is.
    assert not placeable((64, 4, 16))


def test_layout_is_read_from_the_stored_shape():
    assert _layout("w", (512, 64), (512, 64)) == 0
    assert _layout("w", (64, 2, 24), (64, 48)) == 0
    assert _layout("w", (64, 2, 24), (48, 64)) == 1
    assert _layout("w", (4, 24, 64), (64, 96)) == 2
    assert _layout("w", (64, 128), (128, 64)) == 1
    with pytest.raises(GemmaforgeError, match="does not hold"):
        _layout("w", (64, 128), (64, 64))
    with pytest.raises(GemmaforgeError, match="neither"):
        _layout("w", (4, 24, 64), (24, 256))


def _stored_float_tensors(path) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """(shape, values) of every float32 constant tensor with data, once per buffer."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        model = schema.Model.GetRootAs(data, 0)
        shapes = {}
        for s in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(s)
            for t in range(subgraph.TensorsLength()):
                tensor = subgraph.Tensors(t)
                if tensor.Type() == schema.TensorType.FLOAT32 and tensor.ShapeLength():
                    shapes[tensor.Buffer()] = tuple(int(d) for d in tensor.ShapeAsNumpy())
        stored = []
        for index, shape in shapes.items():
            offset, size = buffer_region(model.Buffers(index))
            if size:
                stored.append((shape, np.frombuffer(data[offset:offset + size], np.float32)))
        return stored


@pytest.fixture(scope="module")
def wide_heads_artifact(tmp_path_factory):
    model = mz.LoadedModel(WIDE_HEADS, mz.init_params(WIDE_HEADS, 3), mz.ByteTokenizer(),
                           "random weights (seed 3)", True)
    out = tmp_path_factory.mktemp("wide") / "artifact"
    manifest = export(model, out, formats=("litert",), buckets=(8,))
    return out, manifest


def test_every_placed_weight_is_stored_bit_exact(wide_heads_artifact):
    root, manifest = wide_heads_artifact
    specs = weight_specs(WIDE_HEADS)
    matrices = [name for name, spec in specs.items() if len(spec.shape) >= 2]
    written = manifest["formats"]["litert"]["weights_written_after_conversion"]
    assert written["placed"] == len(matrices)
    assert written["transposed"] == len(matrices) - 1  # all FULLY_CONNECTED filters but the table

    offsets = weight_offsets(root / "weights.safetensors", WIDE_HEADS)
    stored = _stored_float_tensors(root / "litert" / "model.tflite")
    for name in matrices:
        shape = specs[name].shape
        value = np.array(np.memmap(root / "weights.safetensors", np.float32, "r",
                                   offsets[name], shape))
        # The weight in its own order, or transposed as FULLY_CONNECTED's [out, in] filter:
        # which one is told by the stored tensor's shape.
        transposes = {(int(np.prod(shape[k:])), int(np.prod(shape[:k]))): k
                      for k in range(1, len(shape))}
        matches = 0
        for stored_shape, buffer in stored:
            if buffer.size != value.size:
                continue
            k = transposes.get(stored_shape)
            expected = value if k is None else value.reshape(-1, int(np.prod(shape[k:]))).T
            matches += np.array_equal(buffer, expected.reshape(-1))
        assert matches == 1, name


def test_placed_weights_give_the_reference_logits(wide_heads_artifact):
    root, _ = wide_heads_artifact
    report = validate_artifact(root, ["litert"], decode_steps=4)
    assert report["passed"], report


def test_a_constant_folded_from_a_placeholder_is_an_error(tmp_path, tiny_params, monkeypatch):
    # Plain ops let the converter fold x / cap into the LM head, computing a second table from
    # the first; exporting pretends the table can still go in as a placeholder.
    monkeypatch.setattr(exporter.litert, "EMBEDDING", "no such weight")
    model = mz.LoadedModel(mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"),
                           mz.ByteTokenizer(), "test weights", True)
    with pytest.raises(GemmaforgeError, match="folded an operation into a placeholder"):
        export(model, tmp_path / "out", formats=("litert",), buckets=(8,), fused=False)
    assert not (tmp_path / "out").exists()

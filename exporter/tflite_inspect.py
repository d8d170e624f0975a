"""Reading a .tflite flatbuffer's structure (signatures, tensors, operators, composites) without
loading its weights: what the manifest records and the tests assert."""

from __future__ import annotations

import collections
import mmap
import os

import litert_converter.schema_py_generated as schema

_BUILTIN_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items()
                  if not name.startswith("_")}
_TENSOR_TYPES = {value: name.lower() for name, value in vars(schema.TensorType).items()
                 if not name.startswith("_")}


def _tensor(subgraph, index: int) -> dict:
    tensor = subgraph.Tensors(index)
    return {"shape": [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else [],
            "dtype": _TENSOR_TYPES.get(tensor.Type(), str(tensor.Type()))}


def _tensors(subgraph, count: int, get) -> dict:
    """A signature's named tensors -> shape and dtype."""
    return {get(i).Name().decode(): _tensor(subgraph, get(i).TensorIndex()) for i in range(count)}


def _operator_name(model, operator) -> str:
    code = model.OperatorCodes(operator.OpcodeIndex())
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{code.CustomCode().decode()}"
    return _BUILTIN_NAMES.get(builtin, str(builtin))


def _composite_name(operator) -> str | None:
    if operator.BuiltinOptions2Type() != schema.BuiltinOptions2.StableHLOCompositeOptions:
        return None
    table = operator.BuiltinOptions2()
    options = schema.StableHLOCompositeOptions()
    options.Init(table.Bytes, table.Pos)
    return options.Name().decode()


def describe(path: str | os.PathLike) -> dict:
    """Signatures with their named inputs and outputs (shape, dtype), per signature the
    operators of its subgraph and the composites among them, and the bytes of constant data."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        model = schema.Model.GetRootAs(data, 0)
        signatures = {}
        for s in range(model.SignatureDefsLength()):
            signature = model.SignatureDefs(s)
            subgraph = model.Subgraphs(signature.SubgraphIndex())
            ops, composites = collections.Counter(), collections.Counter()
            for o in range(subgraph.OperatorsLength()):
                operator = subgraph.Operators(o)
                ops[_operator_name(model, operator)] += 1
                name = _composite_name(operator)
                if name is not None:
                    composites[name] += 1

            signatures[signature.SignatureKey().decode()] = {
                "inputs": _tensors(subgraph, signature.InputsLength(), signature.Inputs),
                "outputs": _tensors(subgraph, signature.OutputsLength(), signature.Outputs),
                "ops": dict(sorted(ops.items())),
                "composites": dict(sorted(composites.items())),
            }
        buffer_bytes = 0
        for b in range(model.BuffersLength()):
            buffer = model.Buffers(b)
            buffer_bytes += buffer.Size() if buffer.Offset() > 1 else buffer.DataLength()
        return {"signatures": signatures, "subgraphs": model.SubgraphsLength(),
                "buffers": model.BuffersLength(), "buffer_bytes": buffer_bytes}


def _contents(source) -> bytes | bytearray:
    """A flatbuffer's bytes: `source` itself, or the file at that path."""
    if isinstance(source, (bytes, bytearray)):
        return source
    with open(source, "rb") as file:
        return file.read()


def quantized_weights(source) -> dict[int, dict]:
    """The int8 per-channel constant tensors of every subgraph (what the LiteRT export stores),
    once per buffer: name, shape (as stored: [out, in] for FULLY_CONNECTED, [rows, dim] for
    EMBEDDING_LOOKUP), the values and their scales ([out], float32). `source`: a path, or the
    flatbuffer's bytes."""
    import numpy as np

    from exporter.tflite_weights import buffer_region

    found = {}
    data = _contents(source)
    model = schema.Model.GetRootAs(data, 0)
    for _, tensor in _all_tensors(model):
        quantization = tensor.Quantization()
        offset, size = buffer_region(model.Buffers(tensor.Buffer()))
        if (quantization is None or not quantization.ScaleLength() or not size
                or tensor.Type() != schema.TensorType.INT8 or tensor.Buffer() in found):
            continue
        shape = [int(d) for d in tensor.ShapeAsNumpy()]
        found[tensor.Buffer()] = {
            "name": tensor.Name().decode(), "shape": shape,
            "values": np.frombuffer(data, np.int8, size, offset).reshape(shape),
            "scales": quantization.ScaleAsNumpy().astype(np.float32)}
    return found


def _all_tensors(model):
    """(subgraph, tensor) for every tensor of every subgraph."""
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            yield subgraph, subgraph.Tensors(t)


def unpack_int4(data, count: int):
    """`quantize.spec.pack4` undone: `count` signed int8 values."""
    import numpy as np

    packed = np.frombuffer(data, np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:count]
    return ((nibbles.astype(np.int8) ^ 8) - 8).astype(np.int8)


def blockwise_weights(source) -> dict[int, dict]:
    """The int4 blockwise constant tensors of every subgraph (what the LiteRT int4 export
    stores: FULLY_CONNECTED filters [out, in]), once per buffer: name, shape, block, the values
    (unpacked to int8), their float16 scales [out, in / block], and the byte regions of both in
    the file. `source`: a path, or the flatbuffer's bytes."""
    import numpy as np

    from exporter.tflite_weights import buffer_region

    data = _contents(source)
    model = schema.Model.GetRootAs(data, 0)
    blockwise = schema.QuantizationDetails.BlockwiseQuantization
    found = {}
    for subgraph, tensor in _all_tensors(model):
        quantization = tensor.Quantization()
        if (tensor.Type() != schema.TensorType.INT4 or quantization is None
                or quantization.DetailsType() != blockwise or tensor.Buffer() in found):
            continue
        details = schema.BlockwiseQuantization()
        table = quantization.Details()
        details.Init(table.Bytes, table.Pos)
        scales = subgraph.Tensors(details.Scales())
        shape = [int(d) for d in tensor.ShapeAsNumpy()]
        values_at, values_size = buffer_region(model.Buffers(tensor.Buffer()))
        scales_at, scales_size = buffer_region(model.Buffers(scales.Buffer()))
        found[tensor.Buffer()] = {
            "name": tensor.Name().decode(), "shape": shape, "block": details.BlockSize(),
            "values": unpack_int4(bytes(data[values_at:values_at + values_size]),
                                  int(np.prod(shape))).reshape(shape),
            "scales": np.frombuffer(bytes(data[scales_at:scales_at + scales_size]),
                                    np.float16).reshape([int(d) for d in scales.ShapeAsNumpy()]),
            "values_region": (values_at, values_size), "scales_region": (scales_at, scales_size)}
    return found

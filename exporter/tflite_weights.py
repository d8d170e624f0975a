"""Weight matrices reach a .tflite without passing through the converter.

litert-converter copies every constant several times over (about 4x the float32 weights at its
peak), which puts a 2B model out of reach of a 24 GiB machine. So each matrix enters the converter
as a splat: one float32 value, distinct per weight, that MLIR keeps in four bytes and the
flatbuffer writer expands to the weight's full size. After conversion each such buffer is found by
its value; its stored shape says how the converter laid the weight out (in the weight's own
element order, or transposed as a 2-D [out, in] FULLY_CONNECTED filter), and the real values are
written over it in place, a block at a time, read from the exported safetensors. Vectors (norm
scales, which the converter folds with their `1 +`) and matrices whose layout the stored shape
could not tell go in with their values.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from pathlib import Path

import flatbuffers
import litert_converter.schema_py_generated as schema
import numpy as np

from model_zoo.errors import GemmaforgeError

PLACEHOLDER_STEP = 2.0 ** -12  # exact in float32 for millions of weights
PLACEHOLDER_SAMPLES = 64  # elements of a buffer checked to hold its placeholder
BLOCK_ELEMENTS = 1 << 22  # float32 elements written per block (16 MiB)


def placeholder(index: int) -> float:
    """The splat value standing for the `index`-th placed weight."""
    return 1.0 + (index + 1) * PLACEHOLDER_STEP


def _leading_products(shape: tuple[int, ...]) -> set[int]:
    return {math.prod(shape[:j]) for j in range(len(shape) + 1)}


def _transposes(shape: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """k -> the 2-D shape of the weight viewed as [prod(shape[:k]), prod(shape[k:])], transposed."""
    return {k: (math.prod(shape[k:]), math.prod(shape[:k])) for k in range(1, len(shape))}


def placeable(shape: tuple[int, ...]) -> bool:
    """Whether a weight of this shape can go in as a placeholder: a matrix whose transposed 2-D
    views are all told apart by shape from a regrouping of its own element order."""
    leading = _leading_products(shape)
    return len(shape) >= 2 and all(rows not in leading for rows, _ in _transposes(shape).values())


def _layout(name: str, source: tuple[int, ...], stored: tuple[int, ...]) -> int:
    """0 when `stored` keeps the source's element order, else the k of the 2-D transpose."""
    if math.prod(stored) != math.prod(source):
        raise GemmaforgeError(f"the converted model stores {name} as {list(stored)}, which does "
                              f"not hold its {list(source)}")
    for k, shape in _transposes(source).items():
        if tuple(d for d in stored if d != 1) == shape:
            return k
    if _leading_products(stored) <= _leading_products(source):
        return 0
    raise GemmaforgeError(f"the converted model stores {name} as {list(stored)}: neither its "
                          f"own layout {list(source)} nor a 2-D transpose of it")


def buffer_region(buffer) -> tuple[int, int]:
    """(byte offset in the file, byte size) of a buffer's data, inline or offset-addressed."""
    if buffer.Offset() > 1:  # the converter's layout for models over 2 GB
        return buffer.Offset(), buffer.Size()
    field = flatbuffers.number_types.UOffsetTFlags.py_type(buffer._tab.Offset(4))
    if not field:
        return 0, 0
    return buffer._tab.Vector(field), buffer.DataLength()


def _placeholder_buffers(data, values: dict[float, str],
                         sizes: set[int]) -> tuple[dict[int, tuple[str, int, int]], list[int]]:
    """buffer index -> (weight, offset, size) for each buffer filled with a placeholder, and the
    uniform buffers of a placed weight's size that hold no placeholder: constants the converter
    computed from one (an operation folded into it), whose values cannot be written."""
    model = schema.Model.GetRootAs(data, 0)
    found, folded = {}, []
    for index in range(model.BuffersLength()):
        offset, size = buffer_region(model.Buffers(index))
        if size < 4 or size % 4:
            continue
        view = np.frombuffer(data, np.float32, size // 4, offset)
        name = values.get(float(view[0]))
        if name is None and size not in sizes:
            continue
        samples = view[np.linspace(0, view.size - 1, PLACEHOLDER_SAMPLES).astype(np.int64)]
        if not np.all(samples == view[0]):
            continue
        if name is None:
            folded.append(index)
        else:
            found[index] = (name, offset, size)
    return found, folded


def _stored_shapes(data, buffers: set[int]) -> dict[int, set[tuple[int, ...]]]:
    model = schema.Model.GetRootAs(data, 0)
    shapes: dict[int, set[tuple[int, ...]]] = {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            if tensor.Buffer() in buffers:
                if tensor.Type() != schema.TensorType.FLOAT32:
                    raise GemmaforgeError(f"the converted model stores buffer {tensor.Buffer()} "
                                          "as a non-float32 tensor")
                shapes.setdefault(tensor.Buffer(), set()).add(
                    tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ())
    return shapes


def _write_weight(fd: int, offset: int, weights_file: Path, source_offset: int,
                  shape: tuple[int, ...], k: int) -> None:
    """Copies one weight into the .tflite at `offset`: as it is (k == 0, read a block at a time)
    or as its [prod(shape[:k]), prod(shape[k:])] transpose (mapped, written a block of columns at
    a time)."""
    if k == 0:
        size = math.prod(shape) * 4
        with open(weights_file, "rb") as source:
            for start in range(0, size, BLOCK_ELEMENTS * 4):
                block = os.pread(source.fileno(), min(BLOCK_ELEMENTS * 4, size - start),
                                 source_offset + start)
                os.pwrite(fd, block, offset + start)
        return
    rows = math.prod(shape[:k])
    matrix = np.memmap(weights_file, np.float32, "r", source_offset, (rows, math.prod(shape[k:])))
    step = max(1, BLOCK_ELEMENTS // rows)
    for start in range(0, matrix.shape[1], step):
        block = np.ascontiguousarray(matrix[:, start:start + step].T)
        os.pwrite(fd, block.data, offset + start * rows * 4)
    del matrix


def fill_weights(path: Path, placed: dict[str, float], weights_file: Path,
                 offsets: dict[str, int], shapes: dict[str, tuple[int, ...]]) -> dict:
    """Writes each placed weight (name -> placeholder value) over its buffers in the .tflite at
    `path`, reading it from `weights_file` at `offsets`. Returns what it did, for the manifest."""
    values = {float(np.float32(v)): name for name, v in placed.items()}
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        buffers, folded = _placeholder_buffers(data, values,
                                               {math.prod(shapes[name]) * 4 for name in placed})
        stored = _stored_shapes(data, set(buffers))
    if folded:
        raise GemmaforgeError(f"the converter folded an operation into a placeholder weight "
                              f"(buffers {folded[:3]}); that weight must be converted with its "
                              "values")
    missing = set(placed) - {name for name, _, _ in buffers.values()}
    if missing:
        raise GemmaforgeError(f"the converter changed weights {', '.join(sorted(missing)[:3])}: "
                              "their values cannot be written into the .tflite")
    started, transposed = time.perf_counter(), set()
    fd = os.open(path, os.O_RDWR)
    try:
        for index, (name, offset, size) in sorted(buffers.items(), key=lambda item: item[1][1]):
            if size != math.prod(shapes[name]) * 4:
                raise GemmaforgeError(f"the converted model holds {name} in a buffer of {size} "
                                      "bytes, not its own size; cannot write its values")
            layouts = {_layout(name, shapes[name], shape) for shape in stored.get(index, ())}
            if len(layouts) != 1:
                raise GemmaforgeError(f"the converted model stores {name} in {len(layouts)} "
                                      "layouts in one buffer; cannot write its values")
            (k,) = layouts
            _write_weight(fd, offset, weights_file, offsets[name], shapes[name], k)
            if k:
                transposed.add(name)
    finally:
        os.close(fd)
    return {"placed": len(placed), "buffers": len(buffers), "transposed": len(transposed),
            "seconds": round(time.perf_counter() - started, 2)}

"""What the quantization tests share: the rounding bound, and an ONNX artifact's initializers
and 4-bit values read back."""

import numpy as np

# Round-to-nearest puts every weight within half a step of its grid point; float32 arithmetic on
# the scale adds a few ulps.
HALF_STEP_SLACK = 1.0 + 1e-5


def onnx_initializers(out):
    """name -> (TensorProto, raw bytes) of the exported decoder's initializers."""
    import onnx

    model = onnx.load(out / "onnx" / "model.onnx", load_external_data=False)
    tensors = {}
    for proto in model.graph.initializer:
        if proto.data_location == onnx.TensorProto.EXTERNAL:
            where = {entry.key: entry.value for entry in proto.external_data}
            with open(out / "onnx" / where["location"], "rb") as file:
                file.seek(int(where["offset"]))
                raw = file.read(int(where["length"]))
        else:
            raw = proto.raw_data
        tensors[proto.name] = (proto, raw)
    return tensors, model


def nibbles(raw: bytes, count: int) -> np.ndarray:
    """Unsigned 4-bit values, the low nibble of each byte first (ONNX's packing)."""
    data = np.frombuffer(raw, np.uint8)
    return np.stack([data & 0x0F, data >> 4], axis=-1).reshape(-1)[:count]

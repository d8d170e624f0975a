"""QuantSpec and recipes -> one quantized parameter tree shared by every format. Empty until the
quantization issue lands."""

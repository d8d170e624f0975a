"""Trace a Gemma model into pure entry points (prefill_<T>, decode) and write StableHLO, ONNX and
LiteRT artifacts with their manifest. Empty until the exporter issues land: the model_zoo
entry points (`model_zoo.apply`, `model_zoo.inference`) are what it will trace."""

"""Reproducible exports: the same model, options and tool versions give the same bytes in every
file of every format (.litertlm and .task included), and a manifest that differs only in its
`timings` section."""

import json

import pytest

import model_zoo as mz
from exporter import export


def _tree(root) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _without_timings(tree: dict[str, bytes]) -> dict:
    manifest = json.loads(tree.pop("manifest.json"))
    assert set(manifest["timings"]) >= {"export_seconds"}
    del manifest["timings"]
    return manifest


@pytest.mark.parametrize(("formats", "options"), [
    (("stablehlo",), {}),
    (("onnx",), {}),
    (("onnx",), {"onnx_profile": "standard"}),
    (("litert",), {"task": True}),
    (("onnx", "litert"), {"quant": "int8"}),
], ids=["stablehlo", "onnx-ort", "onnx-standard", "litert-task", "int8-onnx-litert"])
def test_two_exports_are_byte_identical(tmp_path, tiny_params, formats, options):
    config = mz.get_preset("tiny-gemma3")
    trees = []
    for name in ("first", "second"):
        model = mz.LoadedModel(config, tiny_params("tiny-gemma3"), mz.ByteTokenizer(),
                               "random weights (seed 0)", True)
        export(model, tmp_path / name, formats=formats, max_len=32, buckets=(8,), **options)
        trees.append(_tree(tmp_path / name))
    first, second = trees
    manifests = [_without_timings(first), _without_timings(second)]
    assert manifests[0] == manifests[1]
    assert manifests[0]["validation"] == {"status": "not run"}
    assert sorted(first) == sorted(second)
    differing = [path for path in first if first[path] != second[path]]
    assert not differing, f"{differing} differ between two identical exports"
    if "litert" in formats:
        assert "litert/model.litertlm" in first

"""Artifacts read as a stranger's: every file checked against the manifest before a runtime
reads it, every manifest path confined to the artifact, caches keyed by content and never
deleting outside themselves, bad manifests and bad runner inputs refused in one line."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import model_zoo as mz
from cli.app import main
from exporter import export, integrity
from exporter.artifact import read_manifest
from model_zoo.errors import GemmaforgeError
from model_zoo.spm import sentencepiece_twin
from runtimes.artifact import open_artifact, verify_artifact
from runtimes.jax_runner import JaxRunner
from runtimes.registry import make_runner
from runtimes.sampling import SamplerConfig


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    """A private copy of the session's tiny-gemma2 StableHLO + LiteRT artifact, to tamper."""
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact("tiny-gemma2"), copy)
    return copy


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory, tiny_params):
    model = mz.LoadedModel(mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"),
                           mz.ByteTokenizer(), "random weights (seed 0)", True)
    out = tmp_path_factory.mktemp("onnx") / "tiny-gemma2"
    export(model, out, formats=("onnx",), buckets=(8,), max_len=32)
    return out


def _flip_a_byte(path: Path) -> None:
    """Changes one byte in the middle of the file: same size, different content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite_manifest(root: Path, change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def _section_file(root: Path, fmt: str) -> str:
    return read_manifest(root)["formats"][fmt]["file"]


@pytest.mark.parametrize(("runtime", "relative"), [
    ("jax", "weights.safetensors"),
    ("stablehlo", "weights.safetensors"),
    ("stablehlo", "stablehlo/decode.jax_exported"),
    ("iree", "stablehlo/decode.mlir"),
    ("litert", "litert/model.tflite"),
    ("litert-lm", "litert/model.litertlm"),
])
def test_a_changed_file_is_refused_before_the_runtime_reads_it(artifact_copy, runtime,
                                                               relative):
    listed = {entry["path"] for entry in read_manifest(artifact_copy)["files"]}
    assert relative in listed
    _flip_a_byte(artifact_copy / relative)
    artifact = open_artifact(artifact_copy)  # presence and sizes: unchanged
    with pytest.raises(GemmaforgeError, match=f"{relative} has changed since export .*sha256"):
        make_runner(runtime, artifact).prefill([2, 5, 9])


def test_a_changed_tokenizer_is_refused(artifact_copy):
    _flip_a_byte(artifact_copy / "tokenizer.model")
    with pytest.raises(GemmaforgeError, match="tokenizer.model has changed since export"):
        open_artifact(artifact_copy).tokenizer()


@pytest.mark.parametrize(("runtime", "relative"), [("onnxruntime", "onnx/model.onnx"),
                                                   ("ort-genai", "onnx/genai_config.json")])
def test_a_changed_onnx_file_is_refused(onnx_artifact, tmp_path, runtime, relative):
    copy = tmp_path / "onnx-artifact"
    shutil.copytree(onnx_artifact, copy)
    _flip_a_byte(copy / relative)
    with pytest.raises(GemmaforgeError, match="has changed since export"):
        make_runner(runtime, open_artifact(copy))


def test_ort_genai_refuses_a_file_planted_in_the_folder_it_reads(onnx_artifact, tmp_path):
    copy = tmp_path / "onnx-artifact"
    shutil.copytree(onnx_artifact, copy)
    (copy / "onnx" / "extra.onnx").write_bytes(b"planted")
    with pytest.raises(GemmaforgeError, match="extra.onnx is not among the manifest's files"):
        make_runner("ort-genai", open_artifact(copy))
    assert make_runner("onnxruntime", open_artifact(copy)).prefill([2, 5]).shape == (512,)


def test_an_intact_artifact_verifies(tiny_artifact, capsys):
    root = tiny_artifact("tiny-gemma3")
    result = verify_artifact(root)
    assert result["passed"] and not result["unlisted"]
    assert {row["status"] for row in result["files"]} == {"ok"}
    assert len(result["files"]) == len(read_manifest(root)["files"])
    code, out, _ = _cli(capsys, "verify", str(root), "--json")
    assert code == 0 and json.loads(out)["passed"]


def test_verify_names_every_changed_missing_and_unlisted_file(artifact_copy, capsys):
    _flip_a_byte(artifact_copy / "weights.safetensors")
    (artifact_copy / "stablehlo" / "decode.mlir").unlink()
    (artifact_copy / "notes.txt").write_text("planted")
    result = verify_artifact(artifact_copy)
    failed = {row["path"]: row["status"] for row in result["files"] if row["status"] != "ok"}
    assert set(failed) == {"weights.safetensors", "stablehlo/decode.mlir"}
    assert "sha256" in failed["weights.safetensors"]
    assert "missing" in failed["stablehlo/decode.mlir"]
    assert result["unlisted"] == ["notes.txt"] and not result["passed"]
    code, out, err = _cli(capsys, "verify", str(artifact_copy))
    assert code == 1
    assert "FAIL" in out and "notes.txt" in out
    assert err.count("\n") == 1 and "does not match its manifest" in err


@pytest.mark.parametrize("path", ["../outside.bin", "/etc/passwd", "stablehlo/../../x",
                                  "", "a\\..\\b", "a\nb", "a\0b"])
def test_manifest_paths_must_stay_inside_the_artifact(artifact_copy, path):
    def change(manifest):
        manifest["files"][0]["path"] = path

    _rewrite_manifest(artifact_copy, change)
    with pytest.raises(GemmaforgeError, match="relative path|must stay inside it|control") as error:
        open_artifact(artifact_copy)
    assert "\n" not in str(error.value)


def test_a_symlink_out_of_the_artifact_is_refused(artifact_copy, tmp_path):
    outside = tmp_path / "outside.model"
    shutil.copy(artifact_copy / "tokenizer.model", outside)
    (artifact_copy / "tokenizer.model").unlink()
    (artifact_copy / "tokenizer.model").symlink_to(outside)
    with pytest.raises(GemmaforgeError, match="leads outside"):
        open_artifact(artifact_copy)


def test_a_section_cannot_name_a_file_the_manifest_does_not_list(artifact_copy):
    def change(manifest):
        manifest["formats"]["litert"]["file"] = "litert/other.tflite"

    _rewrite_manifest(artifact_copy, change)
    with pytest.raises(GemmaforgeError, match="other.tflite is not among the manifest's files"):
        make_runner("litert", open_artifact(artifact_copy))


def test_a_crafted_digest_cannot_reach_outside_the_cache(artifact_copy, tmp_path, monkeypatch):
    """The attack that deleted directories: a digest `../../victim/zzz` became the engine
    cache path, whose parent's folders were then pruned."""
    victim = tmp_path / "victim"
    for index in range(10):
        (victim / f"folder{index}").mkdir(parents=True)
    monkeypatch.setenv("GEMMAFORGE_CACHE", str(tmp_path / "cache"))

    def change(manifest):
        for entry in manifest["files"]:
            if entry["path"].endswith(".litertlm"):
                entry["sha256"] = "../../victim/zzz"

    _rewrite_manifest(artifact_copy, change)
    with pytest.raises(GemmaforgeError, match="sha256 must be 64 lowercase hex digits"):
        make_runner("litert-lm", open_artifact(artifact_copy))
    assert sorted(p.name for p in victim.iterdir()) == [f"folder{i}" for i in range(10)]


def test_the_engine_cache_is_keyed_by_the_loaded_file(tmp_path, monkeypatch):
    from runtimes.litert_runner import engine_cache_dir

    monkeypatch.setenv("GEMMAFORGE_CACHE", str(tmp_path / "cache"))
    bundle = tmp_path / "model.litertlm"
    bundle.write_bytes(b"one model")
    first = engine_cache_dir(bundle)
    assert first.parent == tmp_path / "cache" / "litert-lm"
    assert first.name == integrity.sha256_file(bundle)[:16]
    bundle.write_bytes(b"another model")  # a tampered copy gets a cache of its own
    assert engine_cache_dir(bundle) != first


def test_pruning_removes_only_engine_cache_folders(tmp_path):
    from runtimes.litert_runner import prune_engine_caches

    for age in range(6):
        folder = tmp_path / f"{age:016x}"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"x")
        os.utime(folder, (1_000_000 - age, 1_000_000 - age))
    strangers = tmp_path / "outside"
    strangers.mkdir()
    (strangers / "keep").mkdir()
    (tmp_path / "not-a-cache").mkdir()
    (tmp_path / "ffffffffffffffff").symlink_to(strangers)
    os.utime(tmp_path / "not-a-cache", (1, 1))
    prune_engine_caches(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "0000000000000000", "0000000000000001", "ffffffffffffffff", "not-a-cache", "outside"]
    assert (strangers / "keep").is_dir()


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.update(buckets=[0, -5]), "each bucket must be an integer in"),
    (lambda m: m.update(buckets=[]), "buckets must be a list of 1 to"),
    (lambda m: m.update(buckets=[8, 8]), "repeat a length"),
    (lambda m: m.update(buckets=[256]), r"each bucket must be an integer in \[1, 128\]"),
    (lambda m: m.update(max_len=10**12), "max_len must be an integer in"),
    (lambda m: m.update(max_len="128"), "max_len must be an integer in"),
    (lambda m: m.pop("formats"), "'formats' is missing"),
    (lambda m: m.pop("files"), "'files' must be a list"),
    (lambda m: m["files"].append(m["files"][0]), "is listed twice"),
    (lambda m: m["files"][0].update(size=-1), "size must be a byte count"),
    (lambda m: m["files"].__setitem__(0, "weights"), "must be an object"),
    (lambda m: m.update(format_version=[1]), "format_version"),
])
def test_a_bad_manifest_is_one_clear_error(artifact_copy, capsys, change, message):
    _rewrite_manifest(artifact_copy, change)
    with pytest.raises(GemmaforgeError, match=message):
        open_artifact(artifact_copy)
    code, out, err = _cli(capsys, "run", str(artifact_copy), "-p", "Hi", "-n", "1")
    assert code == 1 and err.startswith("gemmaforge: error:") and err.count("\n") == 1


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe", b"[" * 100_000, b""])
def test_a_manifest_that_is_not_an_object_is_refused(artifact_copy, content):
    (artifact_copy / "manifest.json").write_bytes(content)
    with pytest.raises(GemmaforgeError, match="manifest.json"):
        open_artifact(artifact_copy)


def test_a_manifest_that_is_a_fifo_is_refused_without_reading(artifact_copy):
    (artifact_copy / "manifest.json").unlink()
    os.mkfifo(artifact_copy / "manifest.json")
    with pytest.raises(GemmaforgeError, match="not a regular file"):
        open_artifact(artifact_copy)


def test_a_file_replaced_by_a_fifo_is_refused_without_reading(artifact_copy):
    (artifact_copy / "tokenizer.model").unlink()
    os.mkfifo(artifact_copy / "tokenizer.model")
    with pytest.raises(GemmaforgeError, match="not a regular file"):
        open_artifact(artifact_copy)
    assert "not a regular file" in {row["path"]: row["status"] for row in
                                    verify_artifact(artifact_copy)["files"]}["tokenizer.model"]


@pytest.mark.parametrize("runtime", ["jax", "stablehlo", "iree", "litert"])
def test_ids_outside_the_vocabulary_are_refused_and_the_runner_stays_usable(tiny_artifact,
                                                                            runtime):
    runner = make_runner(runtime, open_artifact(tiny_artifact("tiny-gemma2")))
    vocab = mz.get_preset("tiny-gemma2").vocab_size
    for bad in ([2, vocab], [2, -1], [2, 2**40], [2, 1.5], [2, True]):
        with pytest.raises(GemmaforgeError, match="outside the model's vocabulary|integers"):
            runner.prefill(bad)
    expected = runner.prefill([2, 5, 9])
    with pytest.raises(GemmaforgeError, match="outside the model's vocabulary"):
        runner.decode(vocab)
    np.testing.assert_array_equal(runner.prefill([2, 5, 9]), expected)
    assert np.isfinite(runner.decode(7)).all()


@pytest.mark.parametrize("runtime", ["onnxruntime", "ort-genai"])
def test_onnx_runners_refuse_ids_outside_the_vocabulary(onnx_artifact, runtime):
    runner = make_runner(runtime, open_artifact(onnx_artifact))
    with pytest.raises(GemmaforgeError, match="outside the model's vocabulary"):
        runner.prefill([2, 512])
    runner.prefill([2, 5])
    with pytest.raises(GemmaforgeError, match="outside the model's vocabulary"):
        runner.decode(-3)
    assert np.isfinite(runner.decode(4)).all()


def test_decode_before_prefill_is_a_clear_error(tiny_params):
    runner = JaxRunner(mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"), max_len=16)
    with pytest.raises(GemmaforgeError, match="decode before prefill"):
        runner.decode(3)


def test_a_tokenizer_larger_than_the_model_is_refused(artifact_copy):
    bigger = sentencepiece_twin(mz.ByteTokenizer(), 2048)
    (artifact_copy / "tokenizer.model").write_bytes(bigger)

    def change(manifest):
        for entry in manifest["files"]:
            if entry["path"] == "tokenizer.model":
                entry.update(size=len(bigger), sha256=integrity.sha256_file(
                    artifact_copy / "tokenizer.model"))

    _rewrite_manifest(artifact_copy, change)
    with pytest.raises(GemmaforgeError, match="tokenizer has 2048 pieces but the model embeds"):
        open_artifact(artifact_copy).tokenizer()


@pytest.mark.parametrize("values", [
    {"temperature": float("nan")}, {"temperature": -1.0}, {"temperature": float("inf")},
    {"top_p": float("nan")}, {"top_p": 0.0}, {"top_k": -1}, {"seed": -1}])
def test_bad_sampling_values_are_refused(values):
    with pytest.raises(GemmaforgeError):
        SamplerConfig(**values)


@pytest.mark.parametrize("args", [("--seed", "-1"), ("--temperature", "nan"),
                                  ("--top-p", "nan")])
def test_bad_sampling_options_are_one_line(artifact_copy, capsys, args):
    code, _, err = _cli(capsys, "run", str(artifact_copy), "-p", "Hi", "-n", "2", *args)
    assert code in (1, 2) and err.count("\n") == 1 and "Traceback" not in err


def test_a_verified_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "blob"
    path.write_bytes(b"a" * 1000)
    first = integrity.sha256_file(path)
    calls = []
    hash_file = integrity.sha256_of
    monkeypatch.setattr(integrity, "sha256_of", lambda p: calls.append(p) or hash_file(p))
    assert integrity.sha256_file(path) == first and not calls
    path.write_bytes(b"b" * 1000)
    assert integrity.sha256_file(path) != first and calls == [path]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _paths(value, prefix=()):
    """Every key path into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory, tiny_artifact):
    root = tmp_path_factory.mktemp("fuzz") / "artifact"
    shutil.copytree(tiny_artifact("tiny-gemma1"), root)
    return root


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_mutated_manifest_opens_or_is_one_clear_error(fuzz_root, data):
    """A manifest with any one value replaced by any JSON, or deleted, or with its bytes cut,
    ends in a usable artifact or a GemmaforgeError: never another exception, never a hang."""
    original = (fuzz_root / "manifest.json").read_bytes()
    manifest = json.loads(original)
    paths = list(_paths(manifest))
    path = data.draw(st.sampled_from(paths[1:]))
    action = data.draw(st.sampled_from(["replace", "delete", "truncate"]))
    if action == "truncate":
        content = original[: data.draw(st.integers(0, len(original) - 1))]
    else:
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON)
        content = json.dumps(manifest).encode()
    try:
        (fuzz_root / "manifest.json").write_bytes(content)
        try:
            artifact = open_artifact(fuzz_root)
            artifact.tokenizer()
            artifact.weights()
            for fmt in artifact.manifest["formats"]:
                artifact.format(fmt)
            assert all(1 <= b <= artifact.max_len for b in artifact.buckets)
        except GemmaforgeError as error:
            assert "\n" not in str(error)
    finally:
        (fuzz_root / "manifest.json").write_bytes(original)


def test_ort_genai_never_follows_a_link_planted_in_the_shared_tmpdir(onnx_artifact, tmp_path,
                                                                     monkeypatch):
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (shared / ".ses").symlink_to(victim)
    monkeypatch.setenv("TMPDIR", str(shared))
    runner = make_runner("ort-genai", open_artifact(onnx_artifact))
    assert runner.prefill([2, 5]).shape == (512,)
    assert victim.read_text() == "precious"
    assert os.environ["TMPDIR"] == str(shared)


def test_validation_writes_through_no_planted_link(artifact_copy, tmp_path):
    from runtimes.validation import validate_artifact

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (artifact_copy / ".manifest.json.partial").symlink_to(victim)
    (artifact_copy / "report").mkdir(exist_ok=True)
    (artifact_copy / "report" / ".validation.json.partial").symlink_to(victim)
    assert validate_artifact(artifact_copy, ["stablehlo"], decode_steps=2)["passed"]
    assert victim.read_text() == "precious"
    assert read_manifest(artifact_copy)["validation"]["status"] == "passed"


def test_validation_refuses_a_report_folder_that_leads_elsewhere(artifact_copy, tmp_path):
    from runtimes.validation import validate_artifact

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(artifact_copy / "report", ignore_errors=True)
    (artifact_copy / "report").symlink_to(elsewhere)
    with pytest.raises(GemmaforgeError, match="is not a folder of the artifact"):
        validate_artifact(artifact_copy, ["stablehlo"], decode_steps=2)
    assert list(elsewhere.iterdir()) == []


TAMPERS = {
    "one byte changed": lambda data: data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1])
    + data[len(data) // 2 + 1:],
    "last byte cut": lambda data: data[:-1],
    "one byte appended": lambda data: data + b"\0",
}


def test_every_tampered_file_of_every_format_is_detected(tiny_artifact, onnx_artifact,
                                                         tmp_path):
    """Each listed file of a StableHLO + LiteRT and of an ONNX artifact, changed each way in
    turn: `verify` names exactly that file, every time."""
    tried = undetected = 0
    for source in (tiny_artifact("tiny-gemma2"), onnx_artifact):
        root = tmp_path / source.name / source.parent.name
        shutil.copytree(source, root)
        for entry in read_manifest(root)["files"]:
            path = root / entry["path"]
            original = path.read_bytes()
            for tamper in TAMPERS.values():
                path.write_bytes(tamper(original))
                failed = [row["path"] for row in verify_artifact(root)["files"]
                          if row["status"] != "ok"]
                tried += 1
                undetected += failed != [entry["path"]]
            path.write_bytes(original)
        assert verify_artifact(root)["passed"]
    assert tried >= 3 * 15 and undetected == 0

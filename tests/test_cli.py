"""The `gemmaforge` command line: JSON shapes, readable output, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from cli.app import main
from tests.test_config import PAPER_TABLE_2


def run(capsys, *args):
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def test_zoo_list_json(capsys):
    code, out, _ = run(capsys, "zoo", "list", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert {"gemma3-270m", "tiny-gemma1", "tiny-gemma2", "tiny-gemma3"} <= set(rows)
    for name, (embedding, non_embedding) in PAPER_TABLE_2.items():
        assert rows[name]["embedding_params"] == embedding
        assert rows[name]["non_embedding_params"] == non_embedding
    assert rows["gemma2-9b"]["family"] == "gemma2"


def test_zoo_show_is_readable(capsys):
    code, out, _ = run(capsys, "zoo", "show", "gemma2-27b")
    assert code == 0
    assert "query_pre_attn_scalar  144" in out
    assert "26,047,480,320" in out


def test_generate_json_on_random_weights(capsys):
    code, out, err = run(capsys, "generate", "tiny-gemma2", "--prompt", "Hello", "-n", "6",
                         "--json")
    assert code == 0
    result = json.loads(out)
    assert result["prompt_ids"][0] == 2 and len(result["prompt_ids"]) == 6  # BOS + 5 bytes
    assert len(result["generated_ids"]) == 6
    assert result["weights"] == "random weights (seed 0)"
    assert isinstance(result["text"], str)


def test_generate_runs_the_quantized_reference(capsys):
    args = ("generate", "tiny-gemma2", "--prompt", "Hello", "-n", "6", "--json")
    code, out, _ = run(capsys, *args, "--quant", "int4")
    assert code == 0
    result = json.loads(out)
    assert result["weights"] == "random weights (seed 0), quantized int4"
    assert len(result["generated_ids"]) == 6
    # int8-dyn runs with its activations rounded.
    dynamic = json.loads(run(capsys, *args, "--quant", "int8-dyn")[1])
    assert dynamic["weights"] == "random weights (seed 0), quantized int8-dyn"
    # f32 is a recipe too, and changes nothing.
    same = json.loads(run(capsys, *args, "--quant", "f32")[1])
    plain = json.loads(run(capsys, *args)[1])
    assert same["generated_ids"] == plain["generated_ids"]


def test_generate_says_when_weights_are_random(capsys):
    code, out, err = run(capsys, "generate", "tiny-gemma1", "--prompt", "Hi", "-n", "3")
    assert code == 0
    assert "random weights" in err and "tok/s" in err
    assert out.startswith("Hi")


def test_sampling_is_seeded(capsys):
    args = ("generate", "tiny-gemma3", "-p", "abc", "-n", "8", "--temperature", "1.5", "--json")
    first = json.loads(run(capsys, *args, "--seed", "1")[1])["generated_ids"]
    again = json.loads(run(capsys, *args, "--seed", "1")[1])["generated_ids"]
    assert first == again


@pytest.mark.parametrize(("args", "message"), [
    (("generate", "gemma9-1b", "-p", "x"), "unknown preset 'gemma9-1b'"),
    (("generate", "tiny-gemma2", "-p", "x", "--top-p", "3"), "--top-p"),
    (("generate", "tiny-gemma2", "-p", "x", "-n", "-1"), "--max-new-tokens"),
    (("generate", "tiny-gemma2", "-p", "x", "-n", "500"), "raise --max-len"),
    (("generate", "tiny-gemma2", "-p", "x", "--mesh", "3x"), "DATAxMODEL"),
    (("generate", "tiny-gemma2", "--bogus"), "No such option"),
    (("generate", "tiny-gemma2", "-p", "x", "--quant", "int3"), "unknown recipe 'int3'"),
    (("generate", "tiny-gemma2", "-p", "x", "--quant", "int4-b128"), "block 128 does not divide"),
    (("generate", "tiny-gemma2", "-p", "x", "--quant", "int8", "--mesh", "1x1"), "drop --mesh"),
    (("export", "tiny-gemma2", "--out", "never-written", "--to", "onnx,litert", "--quant",
      "fp16"), "LiteRT export does not store float16 weights"),
    (("export", "tiny-gemma2", "--out", "never-written", "--to", "onnx",
      "--onnx-accuracy-level", "4"), "applies to quantized ONNX models"),
    (("export", "tiny-gemma2", "--out", "never-written", "--to", "onnx", "--quant", "int4",
      "--onnx-accuracy-level", "2"), "must be 0 (float32 activations) or 4"),
    (("export", "tiny-gemma2", "--out", "never-written", "--quant", "int5"),
     "unknown recipe 'int5'"),
    (("export", "tiny-gemma2", "--out", "never-written", "--to", "onnx", "--quant", "source"),
     "keeps a quantized checkpoint's own grids, but the model has random weights; use one "
     "of f32, fp16, int8"),
    (("generate", "tiny-gemma2", "-p", "x", "--quant", "source"), "load a quantized GGUF"),
    (("zoo", "show", "nothing"), "unknown preset"),
])
def test_user_errors_are_one_line(capsys, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an --out the command must never write
    code, out, err = run(capsys, *args)
    assert code != 0
    assert not any(tmp_path.iterdir()), "a refused command wrote something"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gemmaforge: error:")
    assert message in lines[0]
    assert "Traceback" not in err


def test_console_script_and_mesh_flag():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    bin_dir = os.path.dirname(sys.executable)
    done = subprocess.run(
        [os.path.join(bin_dir, "gemmaforge"), "generate", "tiny-gemma3", "-p", "hi", "-n", "4",
         "--mesh", "2x4", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["generated_ids"]) == 4


@pytest.fixture(scope="module")
def real_gguf():
    from model_zoo.checkpoints.default import default_checkpoint

    return default_checkpoint("gemma3-270m")


def test_checkpoint_errors_are_one_line(capsys, tmp_path, real_gguf):
    truncated = tmp_path / "truncated.gguf"
    with open(real_gguf, "rb") as source:
        truncated.write_bytes(source.read(40 << 20))
    cases = [
        (("gemma3-270m", "--checkpoint", str(truncated)), "truncated"),
        (("gemma3-270m", "--checkpoint", str(tmp_path / "nowhere.gguf")), "does not exist"),
        (("tiny-gemma3", "--checkpoint", str(real_gguf)), "does not match preset tiny-gemma3"),
        (("gemma3-270m", "--checkpoint", str(real_gguf), "--tokenizer", str(truncated)),
         "not a SentencePiece model"),
        (("--checkpoint", str(real_gguf)), "name the preset too"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, "generate", *args, "--prompt", "x", "-n", "1")
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1, err
        assert lines[0].startswith("gemmaforge: error:") and message in lines[0], lines[0]


def test_export_validate_run(capsys, tmp_path):
    out = tmp_path / "art"
    code, stdout, err = run(capsys, "export", "tiny-gemma3", "--out", str(out), "--buckets", "8,32")
    assert code == 0, err
    assert "stablehlo" in stdout and "pass" in stdout and "FAIL" not in stdout

    code, stdout, _ = run(capsys, "validate", str(out), "--runtime", "stablehlo", "--json")
    assert code == 0 and json.loads(stdout)["passed"]

    generated = {}
    for runtime in ("stablehlo", "iree", "jax"):
        code, stdout, err = run(capsys, "run", str(out), "--runtime", runtime, "-p", "Hi",
                                "-n", "6", "--json")
        assert code == 0, err
        result = json.loads(stdout)
        assert result["runtime"] == runtime
        generated[runtime] = result["generated_ids"]
    code, stdout, _ = run(capsys, "generate", "tiny-gemma3", "-p", "Hi", "-n", "6", "--json")
    reference = json.loads(stdout)
    assert set(reference) == set(result)  # run prints what generate prints
    assert generated["stablehlo"] == generated["iree"] == generated["jax"] \
        == reference["generated_ids"]


def _greedy_texts(capsys, out, runtimes) -> dict[str, str]:
    """`gemmaforge run` on each runtime: the greedy text it prints."""
    texts = {}
    for runtime in runtimes:
        code, stdout, err = run(capsys, "run", str(out), "--runtime", runtime, "-p", "Hi",
                                "-n", "5", "--json")
        assert code == 0, err
        texts[runtime] = json.loads(stdout)["text"]
    return texts


def test_export_litert_and_run_it_on_both_runtimes(capsys, tmp_path):
    out = tmp_path / "art"
    code, stdout, err = run(capsys, "export", "tiny-gemma2", "--out", str(out), "--to", "litert",
                            "--buckets", "8", "--max-len", "64")
    assert code == 0, err
    assert "litert" in stdout and "pass" in stdout and "FAIL" not in stdout
    code, stdout, err = run(capsys, "validate", str(out), "-r", "litert", "-r", "litert-lm",
                            "--threads", "1", "--json")
    assert code == 0 and json.loads(stdout)["passed"], err
    texts = _greedy_texts(capsys, out, ("litert", "litert-lm", "jax"))
    assert texts["litert"] == texts["litert-lm"] == texts["jax"]
    # a stablehlo runtime on a LiteRT-only artifact is named as missing, in one line
    code, _, err = run(capsys, "run", str(out), "--runtime", "iree", "-p", "Hi")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "stablehlo" in err


def test_export_onnx_and_run_it_on_both_runtimes(capsys, tmp_path):
    out = tmp_path / "art"
    code, stdout, err = run(capsys, "export", "tiny-gemma3", "--out", str(out), "--to", "onnx",
                            "--onnx-profile", "standard", "--max-len", "64")
    assert code == 0, err
    assert "onnxruntime" in stdout and "pass" in stdout and "FAIL" not in stdout
    code, stdout, err = run(capsys, "validate", str(out), "--threads", "1", "--json")
    report = json.loads(stdout)
    assert code == 0 and report["passed"], err
    assert set(report["runtimes"]) == {"onnxruntime", "ort-genai"}
    texts = _greedy_texts(capsys, out, ("onnxruntime", "ort-genai", "jax"))
    assert texts["onnxruntime"] == texts["ort-genai"] == texts["jax"]
    code, _, err = run(capsys, "export", "tiny-gemma3", "--out", str(tmp_path / "x"), "--to",
                       "onnx", "--onnx-profile", "tflite")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--onnx-profile" in err
    assert not (tmp_path / "x").exists()


def test_export_and_run_errors_are_one_line(capsys, tmp_path):
    out = tmp_path / "art"
    code, _, _ = run(capsys, "export", "tiny-gemma1", "--out", str(out), "--buckets", "8",
                     "--no-symbolic", "--no-validate")
    assert code == 0
    cases = [
        (("export", "tiny-gemma1", "--out", str(out)), "already exists"),
        (("export", "tiny-gemma1", "--out", str(tmp_path / "x"), "--to", "gguf"),
         "unknown format 'gguf'"),
        (("export", "tiny-gemma1", "--out", str(tmp_path / "x"), "--buckets", "8,256"),
         "longer than the cache"),
        (("export", "tiny-gemma1", "--out", str(tmp_path / "x"), "--buckets", "a,b"), "--buckets"),
        (("export", "tiny-gemma1", "--out", str(tmp_path / "x"), "--platforms", "metal"),
         "--platforms"),
        (("run", str(tmp_path / "nothing"), "-p", "x"), "not a gemmaforge artifact directory"),
        (("run", str(out), "-r", "tflite", "-p", "x"), "unknown runtime 'tflite'"),
        (("run", str(out), "-p", "x", "-n", "500"), "export it again"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, *args)
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1, err
        assert lines[0].startswith("gemmaforge: error:") and message in lines[0], lines[0]
    assert not (tmp_path / "x").exists()

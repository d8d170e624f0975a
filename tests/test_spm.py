"""The Gemma 3 tokenizer rebuilt from the packaged GGUF's vocabulary against the real
SentencePiece model: same pieces, same ids."""

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

import model_zoo as mz
from model_zoo.checkpoints.default import default_checkpoint
from model_zoo.checkpoints.gguf_reader import GGUFCheckpoint
from model_zoo.spm import GemmaTokenizer
from model_zoo.tokenizer import chat_prompt
from tests.reference_data import TOKENIZER_MODEL

TEXTS = [
    "The capital of France is",
    chat_prompt("Write a haiku about the sea."),
    "<start_of_turn>model\nSure!<end_of_turn>\n<eos>",
    "digits 1234567890 3.14159 1,000,000 2026-11-22",
    "runs of spaces:  two,   three,        eight; tabs\t\tand\nnew\n\nlines\r\n",
    "  leading and trailing spaces  ",
    "unicode: naïve café Ünïcödé — “quotes” ‘single’ … ß ø å",
    "CJK: 日本語のテキスト、中文文本，한국어 텍스트",
    "emoji: 🌊🐚🏖️ 👩‍👩‍👧‍👦 ✅",
    "code: def f(x):\n    return x ** 2  # square\n",
    "url https://example.com/a?b=c&d=e#f and email a.b@example.org",
    "<mask> <unused0> [multimodal] <start_of_image> literal control-looking text",
    "\u0000\u0001 control characters and \ufffd replacement",
]


@pytest.fixture(scope="module")
def ours():
    return GGUFCheckpoint(default_checkpoint("gemma3-270m")).tokenizer()


@pytest.fixture(scope="module")
def real():
    return GemmaTokenizer.from_file(TOKENIZER_MODEL)


def test_rebuilt_pieces_equal_the_real_model(ours, real):
    a, b = spm_pb2.ModelProto(), spm_pb2.ModelProto()
    a.ParseFromString(ours.model_proto)
    b.ParseFromString(real.model_proto)
    assert len(a.pieces) == len(b.pieces) == 262_144
    assert list(a.pieces) == list(b.pieces)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_the_real_tokenizer(ours, real, text):
    assert ours.encode(text) == real.encode(text)
    assert ours.decode(ours.encode(text, add_bos=False)) == real.decode(real.encode(text,
                                                                                    add_bos=False))


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=0, max_size=60))
def test_ids_equal_on_random_text(ours, real, text):
    assert ours.encode(text) == real.encode(text)


def test_special_ids_chat_template_and_stops(ours):
    assert (ours.pad_id, ours.eos_id, ours.bos_id) == (0, 1, 2)
    assert ours.encode("<start_of_turn>user\n", add_bos=False) == [105, 2364, 107]
    assert ours.stop_ids == (106, 1)
    assert ours.vocab_size == mz.get_preset("gemma3-270m").vocab_size


def test_a_file_that_is_not_a_tokenizer_is_refused(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(mz.GemmaforgeError, match="not a SentencePiece model"):
        GemmaTokenizer.from_file(bad)
    with pytest.raises(mz.GemmaforgeError, match="cannot read tokenizer"):
        GemmaTokenizer.from_file(tmp_path / "missing.model")

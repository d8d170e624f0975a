"""Streaming: the text handed out piece by piece as it is generated adds up to the finished
generation's text, whole characters only, stop tokens never shown; a callback's exception
cancels the generation."""

import pytest

from model_zoo import get_preset, init_params
from model_zoo.tokenizer import END_OF_TURN, ByteTokenizer
from runtimes import JaxRunner
from runtimes.base import generate
from runtimes.sampling import SamplerConfig
from runtimes.text import TextStream, generate_text


def test_a_multibyte_character_comes_out_whole_once_its_last_byte_arrives():
    tokenizer = ByteTokenizer()
    stream = TextStream(tokenizer)
    ids = tokenizer.encode("a€b", add_bos=False)  # "€" is three byte tokens
    assert [stream.push(i) for i in ids] == ["a", "", "", "€", "b"]


def test_bytes_that_never_complete_a_character_come_out_at_the_finish():
    tokenizer = ByteTokenizer()
    stream = TextStream(tokenizer)
    ids = tokenizer.encode("a€", add_bos=False)[:-1]
    assert [stream.push(i) for i in ids] == ["a", "", ""]
    assert stream.finish() == tokenizer.decode(ids)[1:] != ""


def test_stop_tokens_are_never_shown():
    tokenizer = ByteTokenizer()
    stream = TextStream(tokenizer)
    (end_of_turn,) = tokenizer.encode(END_OF_TURN, add_bos=False)
    assert [stream.push(i) for i in (*tokenizer.encode("hi", add_bos=False), end_of_turn)] \
        == ["h", "i", ""]


@pytest.fixture(scope="module")
def runner():
    config = get_preset("tiny-gemma3")
    return JaxRunner(config, init_params(config, seed=0), max_len=64)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_streamed_pieces_add_up_to_the_generated_text(runner, temperature):
    pieces: list[str] = []
    result = generate_text(runner, ByteTokenizer(), "Hello", preset="tiny-gemma3",
                           weights="random", max_new_tokens=24,
                           sampler=SamplerConfig(temperature=temperature, seed=3),
                           on_text=pieces.append)
    assert pieces and "".join(pieces) == result.text
    assert result.time_to_first_token_seconds > 0


def test_on_token_sees_every_token_and_its_exception_cancels(runner):
    seen: list[int] = []

    class Enough(Exception):
        pass

    def on_token(token: int) -> None:
        seen.append(token)
        if len(seen) == 3:
            raise Enough

    with pytest.raises(Enough):
        generate(runner, [2, 72, 105], 20, on_token=on_token)
    assert len(seen) == 3
    full = generate(runner, [2, 72, 105], 5)
    assert seen == full.generated_ids[:3]

"""The byte tokenizer used by presets without a real vocabulary, and the chat template."""

import pytest

from model_zoo.errors import GemmaforgeError
from model_zoo.tokenizer import ByteTokenizer, chat_prompt, conversation_prompt


def test_byte_tokenizer_round_trips_unicode_and_turn_markers():
    tokenizer = ByteTokenizer()
    text = chat_prompt("héllo 🌊\n  x")
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_id and ids[1] == 4  # <start_of_turn> is one id
    assert tokenizer.decode(ids) == text
    assert max(ids) < tokenizer.vocab_size <= 512


def test_chat_template_is_gemmas():
    assert chat_prompt("Hi") == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert ByteTokenizer().stop_ids == (5, 1)


def test_a_conversation_alternates_turns_and_ends_where_the_model_answers():
    assert conversation_prompt([("user", "Hi"), ("model", "Hello!"), ("user", "Name?")]) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName?<end_of_turn>\n<start_of_turn>model\n")


@pytest.mark.parametrize("turns", [[], [("user", "a"), ("model", "b")], [("system", "a")]])
def test_a_conversation_that_the_model_cannot_answer_is_refused(turns):
    with pytest.raises(GemmaforgeError):
        conversation_prompt(turns)

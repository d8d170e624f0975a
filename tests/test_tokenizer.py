"""The byte tokenizer used by presets without a real vocabulary, and the chat template."""

from model_zoo.tokenizer import ByteTokenizer, chat_prompt


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

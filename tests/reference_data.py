"""Reference data kept in the repository (tests/data/gemma3_270m, see its README): Hugging Face's
float32 outputs of gemma3-270m and the original Gemma 3 tokenizer, for cross-check tests."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "gemma3_270m"
TOKENIZER_MODEL = DATA / "tokenizer.model"
REFS = DATA
REF_PROMPTS = {
    "france": "The capital of France is",
    "haiku": "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n"
             "<start_of_turn>model\n",
}

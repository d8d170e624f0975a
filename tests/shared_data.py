"""The reference data beside the checkout (../shared): used by cross-check tests only."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER_MODEL = SHARED / "data" / "gemma3_tokenizer.model"
REFS = SHARED / "refs"
REF_PROMPTS = {
    "france": "The capital of France is",
    "haiku": "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n"
             "<start_of_turn>model\n",
}


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data {path} is not present beside the checkout")
    return path

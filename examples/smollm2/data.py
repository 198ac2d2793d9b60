"""The text SmolLM2 is evaluated on: the paragraphs of Python's documentation (pydoc_data.topics) in
examples/tiny_lm's fixed split, as text; edgekit tokenizes it with the model's own tokenizer and cuts it into
the declared windows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TINY_LM_DATA = Path(__file__).resolve().parents[1] / "tiny_lm" / "data.py"


def load_splits() -> dict[str, dict[str, list[str]]]:
    spec = importlib.util.spec_from_file_location("tiny_lm_data", TINY_LM_DATA)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: {"text": texts} for name, texts in module.paragraphs().items()}

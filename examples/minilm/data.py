"""Sentences from Python's own documentation (``pydoc_data.topics``), in a fixed split.

Every topic's text is cut into sentences; those of 6 to 40 words are kept once each, in the order of
the sorted topic names. Sentence i goes to eval if i % 5 == 0, to calib if i % 5 == 1, to train
otherwise; eval keeps the first 200 and calib the first 64. No randomness: the same Python version
gives the same split everywhere.
"""

from __future__ import annotations

import re

EVAL, CALIB = 200, 64


def sentences() -> list[str]:
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            if paragraph.startswith(("   ", ">>>")):  # code and examples, not prose
                continue
            text = " ".join(paragraph.split())
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                if 6 <= len(sentence.split()) <= 40 and not re.search(r"[*=_]{3}", sentence):
                    seen.setdefault(sentence, None)
    return list(seen)


def load_splits() -> dict[str, dict[str, list[str]]]:
    every = sentences()
    return {"eval": {"text": [s for i, s in enumerate(every) if i % 5 == 0][:EVAL]},
            "calib": {"text": [s for i, s in enumerate(every) if i % 5 == 1][:CALIB]},
            "train": {"text": [s for i, s in enumerate(every) if i % 5 > 1]}}

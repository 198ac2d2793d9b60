"""Sentences from Python's own documentation (``pydoc_data.topics``), in a fixed split.

Every topic's text is cut into sentences; those of 6 to 40 words are kept once each, in the order of
the sorted topic names. Sentence i goes to eval if i % 5 == 0, to calib if i % 5 == 1, to train
otherwise; eval keeps the first 200 and calib the first 64. No randomness: the same Python version
gives the same split everywhere.

``load_distill_splits`` (for ``examples/minilm_l3``, where a smaller encoder learns MiniLM's embeddings) has
the same eval and calib splits and a larger train split: the pydoc train sentences plus the sentences of the
docstrings of a fixed list of standard-library modules (more real text, still shipped with Python), with
every eval and calib sentence left out.
"""

from __future__ import annotations

import importlib
import inspect
import re

EVAL, CALIB = 200, 64


# standard-library modules whose docstrings add train text (imported for their __doc__ only)
DOC_MODULES = ("abc argparse array ast asyncio base64 bisect calendar cmd codecs collections colorsys "
               "configparser contextlib copy csv dataclasses datetime decimal difflib dis doctest email enum "
               "filecmp fnmatch fractions ftplib functools getopt gettext glob gzip hashlib heapq hmac html "
               "http.client http.cookies imaplib inspect io ipaddress itertools json locale logging lzma "
               "mailbox mimetypes numbers operator optparse pathlib pickle pkgutil platform plistlib poplib "
               "pprint queue random re sched secrets selectors shelve shlex shutil smtplib socket "
               "socketserver sqlite3 ssl statistics string struct subprocess symtable tarfile tempfile "
               "textwrap threading timeit tokenize trace traceback types typing unittest urllib.parse "
               "urllib.request uuid warnings wave weakref xml.dom.minidom xml.etree.ElementTree zipfile "
               "zoneinfo").split()


def _cut(texts: list[str], seen: dict[str, None]) -> None:
    for doc in texts:
        for paragraph in re.split(r"\n\s*\n", doc):
            if paragraph.startswith(("   ", ">>>")) or paragraph.lstrip().startswith(">>>"):  # code, not prose
                continue
            text = " ".join(paragraph.split())
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                if 6 <= len(sentence.split()) <= 40 and not re.search(r"[*=_]{3}", sentence):
                    seen.setdefault(sentence, None)


def sentences() -> list[str]:
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    _cut([topics[name] for name in sorted(topics)], seen)
    return list(seen)


def docstring_sentences() -> list[str]:
    """Sentences of the docstrings of DOC_MODULES and their public functions, classes and methods."""
    docs: list[str] = []
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        docs.append(module.__doc__ or "")
        for key, value in sorted(vars(module).items()):
            if key.startswith("_") or getattr(value, "__module__", None) != name:
                continue
            docs.append(inspect.getdoc(value) or "")
            if inspect.isclass(value):
                docs += [inspect.getdoc(v) or "" for k, v in sorted(vars(value).items()) if not k.startswith("_")]
    seen: dict[str, None] = {}
    _cut(docs, seen)
    return list(seen)


def load_splits() -> dict[str, dict[str, list[str]]]:
    every = sentences()
    return {"eval": {"text": [s for i, s in enumerate(every) if i % 5 == 0][:EVAL]},
            "calib": {"text": [s for i, s in enumerate(every) if i % 5 == 1][:CALIB]},
            "train": {"text": [s for i, s in enumerate(every) if i % 5 > 1]}}


def load_distill_splits() -> dict[str, dict[str, list[str]]]:
    splits = load_splits()
    held_out = {*splits["eval"]["text"], *splits["calib"]["text"]}
    extra = [s for s in docstring_sentences() if s not in held_out and s not in set(splits["train"]["text"])]
    splits["train"]["text"] += extra
    return splits

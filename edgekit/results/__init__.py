"""Run results on the host: the collector that receives runner reports, and the store that keeps them.

The on-device runner (``edgekit_runner``) POSTs a signed JSON report to the collector
(:mod:`edgekit.results.server`); the collector checks the signature
(:mod:`edgekit.results.signing`) and the schema (:mod:`edgekit.results.schema`) and
writes the run to a SQLite file (:mod:`edgekit.results.store`), which ``edgekit results``
lists and compares (:mod:`edgekit.results.cli`).

Everything lives under one folder, ``$EDGEKIT_HOME`` (default ``~/.edgekit``):
``results.db``, the shared ``token`` and ``rejected/`` (malformed bodies kept for inspection).
This module is stdlib only so that the CLI can import the package at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import EdgekitError

HOME_ENV = "EDGEKIT_HOME"


class ResultsError(EdgekitError):
    """The results store, the collector or the shared token cannot be used as asked."""

    exit_code = 7


def edgekit_home() -> Path:
    """``$EDGEKIT_HOME`` if set (and not empty), else ``~/.edgekit``. Not created here."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".edgekit"

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
import stat
from pathlib import Path

from edgekit.errors import EdgekitError

HOME_ENV = "EDGEKIT_HOME"


class ResultsError(EdgekitError):
    """The results store, the collector or the shared token cannot be used as asked."""

    exit_code = 7


def edgekit_home() -> Path:
    """``$EDGEKIT_HOME`` if set (and not empty), else ``~/.edgekit``. Not created here."""
    value = os.environ.get(HOME_ENV, "").strip()
    try:
        return Path(value).expanduser() if value else Path.home() / ".edgekit"
    except RuntimeError as e:  # "~nosuchuser/x", or no home directory at all
        raise ResultsError(f"cannot find the edgekit home (${HOME_ENV}={value!r}): {e}; set ${HOME_ENV} to a "
                           "folder") from None


def private_dir(path: Path, what: str, follow: bool = True, tighten: bool = False) -> Path:
    """``path`` as a folder only this user can change: created (0700) if missing; refused (ResultsError) if it
    is not a folder, belongs to another user, or others may write to it -- a report, a token or a rejected body
    kept there could then be read, replaced or redirected. ``follow=False`` also refuses a symbolic link
    (for folders inside the home, where a planted link would send writes and deletions elsewhere).
    ``tighten``: a folder of this user's that others may write to is made 0700 instead of refused (for
    edgekit's own folders inside a checked home, which an earlier release created with the umask's mode)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat() if follow else path.lstat()
    except OSError as e:
        raise ResultsError(f"cannot use {path} as the {what}: {e.strerror or e}; set {HOME_ENV} to a folder "
                           "you own") from None
    if stat.S_ISLNK(st.st_mode):
        raise ResultsError(f"the {what} {path} is a symbolic link; refusing to write through it (remove it)")
    if not stat.S_ISDIR(st.st_mode):
        raise ResultsError(f"the {what} {path} is not a folder; set {HOME_ENV} to a folder you own")
    if st.st_uid != os.getuid():
        raise ResultsError(f"the {what} {path} belongs to another user (uid {st.st_uid}); set {HOME_ENV} to a "
                           "folder you own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and tighten:
        path.chmod(0o700)
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ResultsError(f"the {what} {path} can be written by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                           f"run `chmod go-w {path}`")
    return path


def checked_home() -> Path:
    """:func:`edgekit_home`, created if missing and checked with :func:`private_dir`."""
    return private_dir(edgekit_home(), f"edgekit home (${HOME_ENV})")

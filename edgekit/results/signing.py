"""Signed reports: the HMAC-SHA256 check the collector applies, and the shared token.

The exact message signed (the runner's side is ``edgekit_runner.upload.sign``, stdlib only,
and a test checks the two agree)::

    message   = ASCII decimal Unix time in whole seconds + "." + the raw request body bytes
    key       = the token's UTF-8 bytes (the token string itself, not hex-decoded)
    signature = "sha256=" + lowercase hex of HMAC-SHA256(key, message)

sent as ``X-Edgekit-Timestamp: 1767225600`` and ``X-Edgekit-Signature: sha256=<64 hex>``.
The collector recomputes it, compares with :func:`hmac.compare_digest`, and refuses a
timestamp more than ``max_skew_s`` (default 300 s) away from its own clock, so a captured
request cannot be replayed later; within the window a replay repeats a ``run_id`` and the
store keeps one.

The token is ``$EDGEKIT_TOKEN`` if set, else the file ``$EDGEKIT_HOME/token`` (mode 0600),
which :func:`ensure_token` creates with :func:`secrets.token_hex` when it is missing.

>>> verify(token, headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER), body)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
import time
from pathlib import Path

from edgekit_runner.files import UnsafeFile, open_regular

from edgekit.results import ResultsError, checked_home

TIMESTAMP_HEADER = "X-Edgekit-Timestamp"
SIGNATURE_HEADER = "X-Edgekit-Signature"
MAX_SKEW_S = 300
TOKEN_ENV = "EDGEKIT_TOKEN"
TOKEN_FILE = "token"
MIN_TOKEN_CHARS = 16


class SignatureError(ResultsError):
    """A request's signature is missing, malformed, wrong or too old (the collector answers 401)."""


def sign(token: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Edgekit-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    message = f"{timestamp}.".encode("ascii") + body
    return "sha256=" + hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify(token: str, timestamp: str | None, signature: str | None, body: bytes, *,
           now: float | None = None, max_skew_s: int = MAX_SKEW_S) -> None:
    """Raise SignatureError unless ``signature`` is ``body``'s at ``timestamp`` and ``timestamp`` is recent."""
    if not timestamp or not signature:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    if not re.fullmatch(r"[0-9]{1,12}", timestamp):
        raise SignatureError(f"{TIMESTAMP_HEADER} must be Unix seconds (digits), got {timestamp[:40]!r}")
    if not re.fullmatch(r"sha256=[0-9a-f]{64}", signature):
        raise SignatureError(f"{SIGNATURE_HEADER} must be 'sha256=' and 64 lowercase hex digits")
    skew = int(timestamp) - (time.time() if now is None else now)
    if abs(skew) > max_skew_s:
        raise SignatureError(f"timestamp is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the "
                             f"collector's clock (limit {max_skew_s} s); check the device clock")
    if not hmac.compare_digest(sign(token, timestamp, body).encode("ascii"), signature.encode("ascii")):
        raise SignatureError("signature does not match; the runner's token differs from the collector's")


def token_path() -> Path:
    return checked_home() / TOKEN_FILE


def new_token() -> str:
    return secrets.token_hex(32)


def load_token() -> tuple[str, str]:
    """(token, where it came from): ``$EDGEKIT_TOKEN``, else the token file; ResultsError if neither."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return _checked(env, f"${TOKEN_ENV}"), f"${TOKEN_ENV}"
    path = token_path()
    try:
        with open_regular(path) as f:
            st = os.fstat(f.fileno())
            text = f.read(4096).decode("utf-8").strip()
    except FileNotFoundError:
        raise ResultsError(f"no token: set ${TOKEN_ENV} or create {path} with `edgekit serve`") from None
    except (OSError, UnicodeDecodeError, UnsafeFile) as e:
        raise ResultsError(f"cannot read the token file {path}: {e}") from None
    if st.st_uid != os.getuid():
        raise ResultsError(f"token file {path} belongs to another user (uid {st.st_uid}); anyone who can replace it "
                           "can sign reports: remove it (`edgekit serve` makes a new one) or set $EDGEKIT_TOKEN")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ResultsError(f"token file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                           f"run `chmod 600 {path}`")
    return _checked(text, str(path)), str(path)


def ensure_token() -> tuple[str, str]:
    """Like :func:`load_token`, but create the token file (0600, atomically) when there is no token yet."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return load_token()
    path = token_path()
    if path.exists() or path.is_symlink():
        return load_token()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{TOKEN_FILE}.")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(new_token() + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # never replaces a token another process wrote meanwhile
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise ResultsError(f"cannot create the token file {path}: {e.strerror or e}") from None
    return load_token()


def _checked(token: str, source: str) -> str:
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise ResultsError(f"the token from {source} is not valid text (bytes that are not UTF-8)") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise ResultsError(f"the token from {source} is {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                           "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    return token

"""Send a run report to the host's collector: signed, spooled to disk first, retried with backoff.

Stdlib only: this runs on the device. Nothing is lost: :func:`deliver` writes the report
to ``SPOOL/<run_id>.json`` (atomically) before the first attempt and deletes it only once
the collector has it (2xx, or 409 "duplicate": it was stored before). Connection errors,
timeouts, 5xx, 408 and 429 are retried with exponential backoff and then left in the spool;
:func:`flush_spool` sends what is there later (the collector keeps one copy per run_id, so
sending twice is harmless). Any other 4xx will not get better by retrying: the report moves
to ``SPOOL/failed/`` with the collector's reason next to it (``<run_id>.reason``).

Signature (the collector's check is ``edgekit.results.signing``; a test checks they agree)::

    X-Edgekit-Timestamp: <Unix seconds, decimal>
    X-Edgekit-Signature: sha256=<hex HMAC-SHA256(token as UTF-8, f"{timestamp}." as ASCII + body)>

Each attempt is signed afresh, so a report spooled for hours is not refused as stale.

    python -m edgekit_runner.upload --collector http://127.0.0.1:8765   # flush the spool ($EDGEKIT_TOKEN)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_runner import safejson
from edgekit_runner.files import UnsafeFile, read_regular
from edgekit_runner.report import write_atomic

REPORTS_PATH = "/api/v1/reports"
TIMESTAMP_HEADER = "X-Edgekit-Timestamp"
SIGNATURE_HEADER = "X-Edgekit-Signature"
TOKEN_ENV = "EDGEKIT_TOKEN"
FAILED = "failed"
MAX_BACKOFF_S = 30.0
RETRYABLE_4XX = (408, 429)
MAX_REPORT_BYTES = 16 << 20  # a report is a few KB: anything larger is not one
_RUN_ID = re.compile(r"[0-9a-f]{16,64}")
# The collector is reached directly (or through an ssh tunnel), never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Outcome:
    """What became of one report. ``state``: delivered | duplicate | spooled | failed."""

    run_id: str
    state: str
    status: int | None  # the last HTTP status; None when the collector never answered
    attempts: int
    reason: str
    path: Path | None  # where the report lies now; None once the collector has it

    @property
    def delivered(self) -> bool:
        return self.state in ("delivered", "duplicate")

    def describe(self) -> str:
        where = f"; kept in {self.path}" if self.path else ""
        return f"report {self.run_id}: {self.state} after {self.attempts} attempt(s) ({self.reason}){where}"


def sign(token: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Edgekit-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    message = f"{timestamp}.".encode("ascii") + body
    return "sha256=" + hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def collector_settings(url: str, token: str) -> None:
    """Raise ValueError (one line) unless ``url`` is an http(s) URL with a host and ``token`` is usable."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as e:
        raise ValueError(f"--collector {url[:80]!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--collector {url[:80]!r} is not an http:// or https:// URL with a host")
    if not token:
        raise ValueError(f"--collector needs ${TOKEN_ENV} set to the collector's token")
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"${TOKEN_ENV} is not valid text (it holds bytes that are not UTF-8)") from None


def reports_url(url: str) -> str:
    """The collector's base URL (``http://host:port``) or its full reports endpoint -> the endpoint."""
    url = url.rstrip("/")
    return url if url.endswith(REPORTS_PATH) else url + REPORTS_PATH


def post_report(url: str, token: str, report_json: str | bytes, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST one signed report; (HTTP status, the collector's JSON answer). Raises OSError when there is no answer."""
    body = report_json.encode("utf-8") if isinstance(report_json, str) else report_json
    timestamp = str(int(time.time()))
    request = urllib.request.Request(reports_url(url), data=body, method="POST", headers={
        "Content-Type": "application/json", TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(token, timestamp, body)})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, _answer(response.read())
    except urllib.error.HTTPError as e:
        return e.code, _answer(e.read())
    except http.client.HTTPException as e:  # a garbled answer: treat like no answer
        raise ConnectionError(f"bad response from {url}: {type(e).__name__}: {e}") from e


def deliver(url: str, token: str, report_json: str, spool_dir: Path, retries: int = 3, backoff: float = 0.5,
            timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Spool the report, then send it (1 + ``retries`` attempts, waiting ``backoff`` s, doubling, capped)."""
    run_id = _run_id(report_json)
    spool_dir = Path(spool_dir)
    path = spool_dir / f"{run_id}.json"
    spool_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, report_json)
    return _send(url, token, path, run_id, retries, backoff, timeout, sleep)


def flush_spool(url: str, token: str, spool_dir: Path, timeout: float = 10.0) -> list[Outcome]:
    """Send every spooled report once, oldest first; stop at the first one the collector does not answer."""
    outcomes = []
    paths = [p for p in Path(spool_dir).glob("*.json") if _RUN_ID.fullmatch(p.stem)]
    for path in sorted(paths, key=_mtime):
        try:
            outcome = _send(url, token, path, path.stem, 0, 0.0, timeout, time.sleep)
        except FileNotFoundError:
            continue  # another flush sent it meanwhile
        outcomes.append(outcome)
        if outcome.status is None:
            break  # unreachable: the rest wait for the next flush
    return outcomes


def default_spool_dir() -> Path:
    """``$EDGEKIT_HOME/spool`` on the device, else ``~/.edgekit/spool``."""
    return Path(os.environ.get("EDGEKIT_HOME") or "~/.edgekit").expanduser() / "spool"


def _send(url: str, token: str, path: Path, run_id: str, retries: int, backoff: float, timeout: float,
          sleep: Callable[[float], None]) -> Outcome:
    try:
        body = read_regular(path, MAX_REPORT_BYTES)
    except UnsafeFile as e:  # not a report this runner spooled: set it aside, never send it
        return Outcome(run_id, FAILED, None, 0, str(e), _move_to_failed(path, 0, str(e)))
    status, reason, answer = None, "", {}
    for attempt in range(1, retries + 2):
        try:
            status, answer = post_report(url, token, body, timeout)
            reason = str(answer.get("error") or answer.get("message") or f"HTTP {status}")
        except OSError as e:
            status, reason = None, f"{type(e).__name__}: {e}"
        if status is not None and (200 <= status < 300 or (status == 409 and answer.get("duplicate") is True)):
            path.unlink(missing_ok=True)
            return Outcome(run_id, "delivered" if status < 300 else "duplicate", status, attempt, reason, None)
        if status is not None and status < 500 and status not in RETRYABLE_4XX:
            return Outcome(run_id, FAILED, status, attempt, reason, _move_to_failed(path, status, reason))
        if attempt <= retries:
            sleep(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF_S))
    return Outcome(run_id, "spooled", status, retries + 1, reason, path)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _move_to_failed(path: Path, status: int, reason: str) -> Path:
    failed = path.parent / FAILED
    failed.mkdir(parents=True, exist_ok=True)
    write_atomic(failed / f"{path.stem}.reason", (f"HTTP {status}: {reason}" if status else reason) + "\n")
    os.replace(path, failed / path.name)
    return failed / path.name


def _run_id(report_json: str) -> str:
    try:
        run_id = safejson.loads(report_json, "report")["run_id"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a run report (no run_id): {e}") from None
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"report run_id {run_id!r} is not 16-64 lowercase hex digits")
    return run_id


def _answer(raw: bytes) -> dict[str, Any]:
    try:
        answer = safejson.loads(raw, "the collector's answer")
    except ValueError:
        return {"error": raw[:200].decode("utf-8", "replace")}
    return answer if isinstance(answer, dict) else {"error": str(answer)[:200]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit_runner.upload",
                                 description="Send the spooled reports to the collector (token from $EDGEKIT_TOKEN).")
    ap.add_argument("--collector", required=True, help="collector URL, e.g. http://127.0.0.1:8765")
    ap.add_argument("--spool", type=Path, default=None, help="spool folder (default: $EDGEKIT_HOME/spool or "
                                                              "~/.edgekit/spool)")
    args = ap.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "").strip()
    try:
        collector_settings(args.collector, token)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    outcomes = flush_spool(args.collector, token, args.spool or default_spool_dir())
    for outcome in outcomes:
        print(outcome.describe(), file=sys.stderr)
    return 0 if all(o.delivered for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

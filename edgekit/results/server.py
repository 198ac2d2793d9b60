"""The collector: a small HTTP server (stdlib ``ThreadingHTTPServer``) that receives signed run reports.

``POST /api/v1/reports`` — a JSON run report, signed (:mod:`edgekit.results.signing`):

=====  ==================================================================================
201    stored: ``{"message": "stored", "run_id": ..., "duplicate": false}``
409    that ``run_id`` was stored before (a replay or a retry whose answer was lost); not
       stored again: ``{"error": ..., "run_id": ..., "duplicate": true}``. The runner's
       uploader counts this as delivered.
400    bad Content-Length, malformed JSON, or not a report of a known schema; the body is
       kept for inspection in ``rejected/<UTC time>-<n>.body`` (with a ``.reason``; the
       oldest are removed beyond ``max_rejected``)
401    missing, malformed, wrong or stale signature. Nothing is written: unauthenticated
       bodies never reach the disk
411    no Content-Length (chunked uploads are not accepted)
413    Content-Length over ``max_body`` (1 MiB); decided before the body is read
503    the results database is unusable (the uploader keeps the report and retries)
=====  ==================================================================================

``GET /api/v1/health`` answers 200. ``GET /`` is the report page (:mod:`edgekit.report`) over every stored
run, newest 500, with plots and the history of runs per device and bundle (``&device=ID_OR_PROFILE`` and
``&bundle=PATH_OR_SHA256_PREFIX`` narrow it): read-only, and only with the collector's token (``/?token=TOKEN`` or
``Authorization: Bearer TOKEN``; 401 otherwise; the query is never logged). Every request is logged as one line (logger
``edgekit.results.server``); a bad request never stops the server.

A report whose model sha256 matches a bundle the collector was given (``manifests``) is
stored with that bundle's manifest summary.

>>> with serve_in_thread(tmp / "results.db", token="...") as running:  # doctest: +SKIP
...     subprocess.run(["python", "-m", "edgekit_runner", bundle, "--collector", running.url])
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgekit.fsutil import write_bytes_atomic
from edgekit.results import ResultsError, checked_home, private_dir
from edgekit.results.schema import SUPPORTED_VERSIONS, ReportInvalid, parse_report
from edgekit.results.signing import MAX_SKEW_S, SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, ensure_token, verify
from edgekit.results.store import ResultsStore, model_sha256

REPORTS_PATH = "/api/v1/reports"
HEALTH_PATH = "/api/v1/health"
MAX_BODY = 1 << 20
MAX_REJECTED = 100
DRAIN_LIMIT = 16 << 20  # an oversized body up to this is read and dropped, so the client sees the 413
READ_TIMEOUT_S = 10.0  # one read or write on a connection
REQUEST_DEADLINE_S = 30.0  # a whole request, however slowly it trickles in
MAX_HANDLERS = 64  # requests handled at once; more get an immediate 503 (the uploader retries)
LISTEN_BACKLOG = 128  # connections the kernel queues before accept (socketserver's default is 5)
_BUSY = json.dumps({"error": "the collector is handling as many requests as it takes; retry shortly"}).encode()

log = logging.getLogger(__name__)
_PLOT_LOCK = threading.Lock()


@dataclass
class Collector:
    """What the request handlers share: the store, the token, the limits, the bundles it knows."""

    store: ResultsStore
    token: str
    rejected_dir: Path  # where 400'd bodies are kept (new_collector: $EDGEKIT_HOME/rejected)
    max_body: int = MAX_BODY
    max_skew_s: int = MAX_SKEW_S
    max_rejected: int = MAX_REJECTED
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # model sha256 -> bundle manifest
    received: list[str] = field(default_factory=list)  # run_ids stored by this collector, in order
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def report_html(self, device: str | None = None, bundle: str | None = None) -> str:
        """The report page over the stored runs (newest 500), optionally of one ``device`` (id or profile) and/or
        ``bundle`` (path or model sha256 prefix): tables, history per device and bundle, budgets, plots
        (:mod:`edgekit.report`)."""
        from edgekit.report import collect, plots, to_html

        with _PLOT_LOCK:  # matplotlib's pyplot is not thread-safe
            report = collect(store=self.store, limit=500, device=device, of_bundle=bundle)
            which = " · ".join(x for x in (device, bundle) if x)
            report.title = (f"edgekit collector — {len(report.variants)} stored runs"
                            + (f" of {which}" if which else "") + f" ({self.store.path.name})")
            return to_html(report, plots(report))

    def add_manifest(self, manifest: dict[str, Any]) -> None:
        """Reports of this bundle's model (by sha256) are stored with its manifest summary."""
        sha = model_sha256(manifest)
        if sha:
            self.manifests[sha] = manifest

    def receive(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """Check, parse and store one POSTed report; (HTTP status, JSON answer)."""
        try:
            verify(self.token, headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER), body,
                   max_skew_s=self.max_skew_s)
        except SignatureError as e:
            return 401, {"error": str(e)}
        try:
            report = parse_report(body)
        except ReportInvalid as e:
            return 400, {"error": str(e), "kept": self.keep_aside(body, str(e))}
        try:
            new = self.store.add(report, manifest=self.manifests.get(report.bundle.model_sha256 or ""))
        except ResultsError as e:
            log.error("cannot store run %s: %s", report.run_id, e)
            return 503, {"error": f"the collector cannot store reports right now: {e}"}
        if not new:
            return 409, {"error": f"run {report.run_id} was already stored; not stored again",
                         "run_id": report.run_id, "duplicate": True}
        with self._lock:
            self.received.append(report.run_id)
        return 201, {"message": "stored", "run_id": report.run_id, "duplicate": False}

    def keep_aside(self, body: bytes, reason: str) -> str | None:
        """Write a rejected body to ``rejected_dir`` (oldest beyond ``max_rejected`` removed); its file name."""
        try:
            private_dir(self.rejected_dir, "folder for rejected reports", follow=False, tighten=True)
        except ResultsError as e:
            log.warning("not keeping a rejected body: %s", e)
            return None
        try:
            with self._lock:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                path = self.rejected_dir / f"{stamp}-{next(self._counter)}.body"
                while path.exists():  # a collector started earlier in the same second
                    path = self.rejected_dir / f"{stamp}-{next(self._counter)}.body"
                write_bytes_atomic(path.with_suffix(".reason"), (reason + "\n").encode("utf-8"))
                write_bytes_atomic(path, body)
                bodies = sorted(self.rejected_dir.glob("*.body"), key=lambda p: p.stat().st_mtime_ns)
                for old in bodies[: max(0, len(bodies) - self.max_rejected)]:
                    old.unlink(missing_ok=True)
                    old.with_suffix(".reason").unlink(missing_ok=True)
            return path.name
        except OSError as e:
            log.warning("could not keep a rejected body in %s: %s", self.rejected_dir, e)
            return None


@dataclass(frozen=True)
class RunningCollector:
    """A collector serving in a background thread (see :func:`serve_in_thread`)."""

    url: str  # base URL, e.g. http://127.0.0.1:41234
    collector: Collector


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgekit-collector"
    timeout = READ_TIMEOUT_S  # a client that stops sending mid-body is dropped, not waited on forever
    server: _Server

    def do_GET(self) -> None:
        route, _, query = self.path.partition("?")
        if route == HEALTH_PATH:
            self._reply(200, {"ok": True, "schema_versions": list(SUPPORTED_VERSIONS)})
        elif route in ("/", "/index.html"):
            self._report_page(query)
        else:
            self._reply(404, {"error": f"no endpoint {route}; reports go to POST {REPORTS_PATH}, the report page is "
                                       "GET /"})

    def do_POST(self) -> None:
        collector = self.server.collector
        if self.path != REPORTS_PATH:
            self._reply(404, {"error": f"no endpoint {self.path}; reports go to POST {REPORTS_PATH}"})
            return
        length = self.headers.get("Content-Length")
        if length is None:
            self._reply(411, {"error": "Content-Length is required (chunked bodies are not accepted)"})
            return
        if not re.fullmatch(r"[0-9]{1,15}", length.strip()):  # str.isdigit() also takes "²" and "٣"
            self._reply(400, {"error": f"Content-Length {length[:40]!r} is not a byte count"})
            return
        size = int(length)
        if size > collector.max_body:
            if size <= DRAIN_LIMIT:
                self._drain(size)
            self._reply(413, {"error": f"report is {size} bytes; the collector accepts at most {collector.max_body}"})
            return
        body = self.rfile.read(size)
        if len(body) < size:
            self._reply(400, {"error": f"body ended after {len(body)} of {size} bytes"})
            return
        try:
            status, answer = collector.receive(self.headers, body)
        except Exception:  # a bug here must not take the server down; the uploader retries a 500
            log.exception("error handling a report")
            status, answer = 500, {"error": "internal error in the collector; see its log"}
        self._reply(status, answer)

    def _drain(self, size: int) -> None:
        with contextlib.suppress(OSError):
            while size > 0 and (chunk := self.rfile.read(min(size, 1 << 16))):
                size -= len(chunk)

    def _report_page(self, query: str) -> None:
        import hmac
        from urllib.parse import parse_qs

        auth = self.headers.get("Authorization", "")
        params = parse_qs(query)
        given = params.get("token", [""])[0] or (auth[7:] if auth.startswith("Bearer ") else "")
        if not given or not hmac.compare_digest(given.encode(), self.server.collector.token.encode()):
            self._reply(401, {"error": "the report page needs the collector's token: /?token=TOKEN or "
                                       "Authorization: Bearer TOKEN"})
            return
        try:
            page = self.server.collector.report_html(device=params.get("device", [None])[0] or None,
                                                     bundle=params.get("bundle", [None])[0] or None).encode("utf-8")
        except ResultsError as e:
            self._reply(503, {"error": f"cannot read the results store: {e}"})
            return
        log.info('%s "GET /" 200 %d', self.client_address[0], len(page))
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(page)

    def _reply(self, status: int, answer: dict[str, Any]) -> None:
        """Log the request's one line (before answering: the client may act on the answer at once), then answer."""
        note = answer.get("error") or answer.get("message") or ""
        headers = getattr(self, "headers", None)  # absent when the request line itself was refused
        log.info('%s "%s %s" %d %s %s %s', self.client_address[0], self.command, str(getattr(self, "path", "-")).split("?")[0][:200],
                 status, headers.get("Content-Length", "-") if headers else "-", answer.get("run_id") or "-", note)
        payload = json.dumps(answer).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if self.request_version == "HTTP/0.9":  # a bare "GET /path": answered like HTTP/1.0, with a status line
            self.request_version = "HTTP/1.0"
        return ok

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, HTTP/2+, a line or headers too long, an unknown
        method) as JSON like every other answer, always with a status line (http.server writes a bare HTML
        body to a request it took for HTTP/0.9)."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        self._reply(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        """Replaced by the one line :meth:`_reply` logs."""

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("%s %s", self.client_address[0], format % args)


class _Server(ThreadingHTTPServer):
    """A thread per request, at most :data:`MAX_HANDLERS` at once (the next ones are answered 503 at
    once, without reading them), a listen backlog of :data:`LISTEN_BACKLOG`, and a watchdog that closes
    any connection still open :data:`REQUEST_DEADLINE_S` after it was accepted."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    collector: Collector

    def __init__(self, address: Any, max_handlers: int = MAX_HANDLERS, request_deadline_s: float = REQUEST_DEADLINE_S):
        self.max_handlers, self.request_deadline_s = max_handlers, request_deadline_s
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._open: dict[Any, float] = {}  # connection -> monotonic time it was accepted
        self._open_lock = threading.Lock()
        self._stop = threading.Event()
        super().__init__(address, _Handler)  # binds (and calls server_close if that fails)
        self._watchdog = threading.Thread(target=self._expire_slow_requests, name="edgekit-collector-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                                + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)
                request.shutdown(socket.SHUT_WR)
                request.setblocking(False)
                for _ in range(16):  # read what already arrived: closing over unread bytes sends a reset,
                    if not request.recv(4096):  # which can destroy the 503 before the client reads it
                        break
            log.warning("%s busy: %d requests in progress, answered 503", client_address[0], self.max_handlers)
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: Any) -> None:
        with self._open_lock:
            if self._open.pop(request, None) is None:
                return
        self._slots.release()

    def _expire_slow_requests(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            with self._open_lock:
                late = [r for r, t in self._open.items() if now - t > self.request_deadline_s]
            for request in late:  # the handler's next read or write fails and its thread ends
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-answer is one log line, not a traceback."""
        log.warning("%s connection error: %r", client_address[0], sys.exc_info()[1])


def make_server(collector: Collector, host: str = "127.0.0.1", port: int = 0, *, max_handlers: int = MAX_HANDLERS,
                request_deadline_s: float = REQUEST_DEADLINE_S) -> _Server:
    """Bind (port 0 = any free port); raise ResultsError if the address cannot be used."""
    try:
        server = _Server((host, port), max_handlers, request_deadline_s)
    except OSError as e:
        raise ResultsError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") \
            from None
    server.collector = collector
    return server


def server_url(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def new_collector(db: Path | str | None = None, token: str | None = None, *, max_body: int = MAX_BODY,
                  manifests: Iterable[dict[str, Any]] = (), rejected_dir: Path | None = None) -> Collector:
    """A collector over the store at ``db`` (default ``$EDGEKIT_HOME/results.db``); the token defaults to
    ``$EDGEKIT_TOKEN`` or the token file (created if missing)."""
    collector = Collector(ResultsStore(db), token or ensure_token()[0],
                          Path(rejected_dir) if rejected_dir is not None else checked_home() / "rejected",
                          max_body=max_body)
    for manifest in manifests:
        collector.add_manifest(manifest)
    return collector


@contextlib.contextmanager
def serve_in_thread(db: Path | str | None = None, token: str | None = None, *, host: str = "127.0.0.1",
                    port: int = 0, max_body: int = MAX_BODY, manifests: Iterable[dict[str, Any]] = (),
                    rejected_dir: Path | None = None, **limits: Any) -> Iterator[RunningCollector]:
    """Serve in a background thread for the ``with`` block (port 0: a free one); stop cleanly after it.
    ``limits``: ``max_handlers``, ``request_deadline_s`` (see :func:`make_server`)."""
    server = make_server(new_collector(db, token, max_body=max_body, manifests=manifests,
                                       rejected_dir=rejected_dir), host, port, **limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="edgekit-collector", daemon=True)
    thread.start()
    try:
        yield RunningCollector(server_url(server), server.collector)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()



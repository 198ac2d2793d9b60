"""A raw HTTP client for the collector tests: signed reports and bytes sent exactly as given."""

from __future__ import annotations

import contextlib
import socket
import time

from edgekit_runner import upload
from edgekit_runner.report import RunReport

from edgekit.results.server import HEALTH_PATH

TOKEN = "f00d" * 16
SHA = "5e" * 32


def report_json(**extra) -> str:
    return RunReport("OK", {"path": "/data/b", "profile": "pixel8", "format": "onnx", "backend": "cpu",
                            "precision": "fp32", "model_sha256": SHA},
                     latency_ms={"p50": 1.25, "median": 1.25, "p90": 1.5}, metrics={"accuracy": 0.95},
                     device={"node": "board"}, **extra).to_json()


def raw_request(url: str, data: bytes, timeout: float = 5.0, half_close: bool = True) -> tuple[int, bytes]:
    """Send bytes as they are (no client library fixing the request up); (status, whole answer).
    ``half_close=False`` keeps the sending side open, as a client still about to send a body does."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            with contextlib.suppress(OSError):  # a server that answered at once (503) may have closed already
                s.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # what arrived before a reset is still the answer
            while chunk := s.recv(65536):
                answer += chunk
    return (int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0), answer


def signed_headers(body: bytes, timestamp: int | None = None, token: str = TOKEN) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    return f"X-Edgekit-Timestamp: {ts}\r\nX-Edgekit-Signature: {upload.sign(token, ts, body)}\r\n"


def health(url: str) -> int:
    return raw_request(url, f"GET {HEALTH_PATH} HTTP/1.0\r\n\r\n".encode())[0]

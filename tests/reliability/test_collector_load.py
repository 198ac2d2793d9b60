"""Issue 10: the collector under load and a crash. 8 clients x 25 signed reports through the runner's own
uploader (spool first, retry with backoff), bad requests interleaved, the collector killed with SIGKILL
while it works and started again: every report the collector acknowledged is stored, each exactly once,
as it was sent, and once the spools are flushed every report is there and nothing else."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from collector_client import TOKEN, raw_request, report_json, signed_headers
from edgekit_runner import upload

from edgekit.results.server import REPORTS_PATH

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, REPORTS = 8, 25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "EDGEKIT_HOME": str(home), "EDGEKIT_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "listening on" in proc.stdout.readline()
    return proc


def _stored(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT run_id, report FROM runs").fetchall()


def _bad_request(url: str, i: int) -> int:
    """One of four bad requests; its status (0 if the collector was down at that moment)."""
    body = b'{"schema_version": 2, "run_id": "nothex"}'
    kinds = [
        f"POST {REPORTS_PATH} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body,  # unsigned: 401
        f"POST {REPORTS_PATH} HTTP/1.1\r\nContent-Length: {len(body)}\r\n{signed_headers(body)}\r\n".encode() + body,
        f"POST {REPORTS_PATH} HTTP/1.1\r\nContent-Length: {2 << 20}\r\n\r\n".encode(),  # 413
        f"POST {REPORTS_PATH} HTTP/1.1\r\nContent-Length: 12x\r\n\r\n".encode(),  # 400
    ]
    try:
        return raw_request(url, kinds[i % 4], timeout=10)[0]
    except OSError:
        return 0


def test_acknowledged_reports_survive_load_bad_requests_and_kill_9(tmp_path):
    home, port = tmp_path / "home", _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(home, port)
    acknowledged: dict[str, str] = {}
    sent: dict[str, str] = {}
    bad_statuses: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        spool = tmp_path / f"spool-{n}"
        for i in range(REPORTS):
            text = report_json()
            with lock:
                sent[json.loads(text)["run_id"]] = text
            outcome = upload.deliver(url, TOKEN, text, spool, retries=6, backoff=0.2)
            if outcome.delivered:
                with lock:
                    acknowledged[outcome.run_id] = text
            if i % 3 == n % 3:
                status = _bad_request(url, n + i)
                with lock:
                    bad_statuses.append(status)
            time.sleep(0.02)  # a device's pace, so that the kill lands in the middle of the load

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    db = home / "results.db"
    deadline = time.monotonic() + 120
    while not db.exists() or len(_stored(db)) < 60:  # kill it in the middle of the load
        assert server.poll() is None and time.monotonic() < deadline, "the collector stopped or stalled"
        time.sleep(0.01)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=30)
    before_kill = {run_id for run_id, _ in _stored(db)}
    time.sleep(0.5)
    server = _start(home, port)
    try:
        for t in threads:
            t.join(timeout=300)
        rows = dict(_stored(db))
        assert set(acknowledged) <= set(rows), "an acknowledged report was lost"
        assert all(json.loads(rows[r]) == json.loads(acknowledged[r]) for r in acknowledged)
        for n in range(CLIENTS):  # what the uploader still holds goes now
            upload.flush_spool(url, TOKEN, tmp_path / f"spool-{n}")
            assert list((tmp_path / f"spool-{n}").glob("*.json")) == []
        rows = _stored(db)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert len(rows) == len({r for r, _ in rows}) == CLIENTS * REPORTS  # each once, nothing else
    assert {r for r, _ in rows} == set(sent) and 60 <= len(before_kill) < CLIENTS * REPORTS
    assert set(bad_statuses) <= {0, 400, 401, 413} and {400, 401, 413} <= set(bad_statuses)

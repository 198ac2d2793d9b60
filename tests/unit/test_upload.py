"""The runner's uploader against the real collector on 127.0.0.1: nothing lost (spooled when the collector is
down, delivered later exactly once), retried with backoff, 4xx set aside with the reason."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from edgekit_runner import upload
from edgekit_runner.report import RunReport

from edgekit.results.server import serve_in_thread

TOKEN = "c0ffee" * 8


def report_json() -> str:
    return RunReport("OK", {"path": "/b", "profile": "pixel8"}, latency_ms={"p50": 1.0, "p90": 2.0},
                     device={"node": "board"}).to_json()


def free_port() -> int:
    """A port nothing listens on (connections to it are refused until a server binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    return tmp_path


def test_collector_down_spools_then_a_flush_delivers_exactly_once(home):
    spool, text, waits = home / "spool", report_json(), []
    run_id = json.loads(text)["run_id"]
    url = f"http://127.0.0.1:{free_port()}"
    outcome = upload.deliver(url, TOKEN, text, spool, retries=3, backoff=0.25, sleep=waits.append)
    assert (outcome.state, outcome.status, outcome.attempts) == ("spooled", None, 4)
    assert "ConnectionRefused" in outcome.reason or "refused" in outcome.reason
    assert waits == [0.25, 0.5, 1.0]
    assert os.listdir(spool) == [f"{run_id}.json"] and (spool / f"{run_id}.json").read_text() == text

    with serve_in_thread(home / "results.db", TOKEN) as running:
        flushed = upload.flush_spool(running.url, TOKEN, spool)
        assert [(o.run_id, o.state, o.status) for o in flushed] == [(run_id, "delivered", 201)]
        assert upload.flush_spool(running.url, TOKEN, spool) == []  # nothing left to send
        again = upload.deliver(running.url, TOKEN, text, spool)  # the runner re-sends the same report
        assert (again.state, again.status, again.path) == ("duplicate", 409, None)
        assert [r.run_id for r in running.collector.store.list_runs()] == [run_id]
        assert running.collector.received == [run_id]
    assert os.listdir(spool) == []


def test_retries_reach_a_collector_that_comes_up_later(home):
    port, ready, stop = free_port(), threading.Event(), threading.Event()

    def collector_later() -> None:
        time.sleep(0.4)
        with serve_in_thread(home / "results.db", TOKEN, port=port):
            ready.set()
            stop.wait(10)

    thread = threading.Thread(target=collector_later)
    thread.start()
    try:
        outcome = upload.deliver(f"http://127.0.0.1:{port}", TOKEN, report_json(), home / "spool", retries=6,
                                 backoff=0.1)
    finally:
        stop.set()
        thread.join()
    assert ready.is_set() and outcome.state == "delivered" and outcome.status == 201
    assert outcome.attempts >= 2  # the first attempts were refused: the collector was not up yet
    assert os.listdir(home / "spool") == []


def test_a_4xx_is_not_retried_and_moves_to_failed_with_the_reason(home):
    spool, text, waits = home / "spool", report_json(), []
    run_id = json.loads(text)["run_id"]
    with serve_in_thread(home / "results.db", TOKEN) as running:
        outcome = upload.deliver(running.url, "a-different-token-entirely", text, spool, retries=3,
                                 sleep=waits.append)
        assert running.collector.store.list_runs() == []
    assert (outcome.state, outcome.status, outcome.attempts, waits) == ("failed", 401, 1, [])
    assert outcome.path == spool / "failed" / f"{run_id}.json" and outcome.path.read_text() == text
    reason = (spool / "failed" / f"{run_id}.reason").read_text()
    assert reason.startswith("HTTP 401: signature does not match")
    assert sorted(os.listdir(spool)) == ["failed"]


def test_5xx_is_retried_then_left_in_the_spool(home):
    seen = []

    class Unavailable(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(503)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        text, waits = report_json(), []
        outcome = upload.deliver(f"http://127.0.0.1:{server.server_address[1]}", TOKEN, text, home / "spool",
                                 retries=2, backoff=1.5, sleep=waits.append)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert (outcome.state, outcome.status, outcome.attempts, waits) == ("spooled", 503, 3, [1.5, 3.0])
    assert seen == [text.encode()] * 3
    assert outcome.path.read_text() == text


def test_flush_stops_at_the_first_unanswered_report_and_keeps_the_rest(home):
    spool = home / "spool"
    texts = [report_json() for _ in range(3)]
    down = f"http://127.0.0.1:{free_port()}"
    for text in texts:
        upload.deliver(down, TOKEN, text, spool, retries=0)
    outcomes = upload.flush_spool(down, TOKEN, spool)
    assert len(outcomes) == 1 and outcomes[0].state == "spooled"
    assert len(list(spool.glob("*.json"))) == 3
    (spool / "notes.json").write_text("not a report")  # only <run_id>.json files are sent
    with serve_in_thread(home / "results.db", TOKEN) as running:
        assert sorted(o.status for o in upload.flush_spool(running.url, TOKEN, spool)) == [201] * 3
        stored = {r.run_id for r in running.collector.store.list_runs()}
    assert stored == {json.loads(t)["run_id"] for t in texts}
    assert os.listdir(spool) == ["notes.json"]


def test_flush_command_uses_the_token_from_the_environment(home, monkeypatch, capsys):
    spool, text = home / "spool", report_json()
    upload.deliver(f"http://127.0.0.1:{free_port()}", TOKEN, text, spool, retries=0)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # the collector is never reached through a proxy
    with serve_in_thread(home / "results.db", TOKEN) as running:
        monkeypatch.delenv("EDGEKIT_TOKEN", raising=False)
        assert upload.main(["--collector", running.url, "--spool", str(spool)]) == 2
        monkeypatch.setenv("EDGEKIT_TOKEN", TOKEN)
        assert upload.main(["--collector", running.url + "/api/v1/reports/", "--spool", str(spool)]) == 0
        assert len(running.collector.store.list_runs()) == 1
    assert "delivered after 1 attempt(s)" in capsys.readouterr().err


def test_a_report_without_a_safe_run_id_is_refused_before_anything_is_written(home):
    for bad in ('{"run_id": "../../etc/passwd"}', '{"status": "OK"}', "not json"):
        with pytest.raises(ValueError, match="run_id|not a run report"):
            upload.deliver("http://127.0.0.1:1", TOKEN, bad, home / "spool")
    assert not (home / "spool").exists()

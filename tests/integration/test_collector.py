"""The collector over real sockets on 127.0.0.1 with a real SQLite store: what is stored, what is refused
and with which status, what is kept aside, and that the server keeps answering after every bad request."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from collector_client import SHA, TOKEN, health, raw_request, report_json, signed_headers
from edgekit_runner import upload

from edgekit.results import ResultsError
from edgekit.results.server import DRAIN_LIMIT, REPORTS_PATH, serve_in_thread
from edgekit.results.store import ResultsStore


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    monkeypatch.delenv("EDGEKIT_TOKEN", raising=False)
    return tmp_path


@pytest.fixture
def running(home):
    with serve_in_thread(home / "results.db", TOKEN, max_body=64 * 1024) as running:
        yield running


def test_a_signed_report_is_stored_with_201(running):
    text = report_json()
    status, answer = upload.post_report(running.url, TOKEN, text)
    run_id = json.loads(text)["run_id"]
    assert (status, answer) == (201, {"message": "stored", "run_id": run_id, "duplicate": False})
    run = running.collector.store.get(run_id)
    assert run.report == json.loads(text) and run.latency_p50_ms == 1.25 and run.device_id == "board"
    assert running.collector.received == [run_id]


def test_wrong_token_stale_or_missing_signature_is_401_and_nothing_is_stored(running, home):
    body = report_json().encode()
    assert upload.post_report(running.url, "not-the-collector-token", body)[0] == 401
    stale = int(time.time()) - 1000
    head = f"POST {REPORTS_PATH} HTTP/1.0\r\nContent-Length: {len(body)}\r\n"
    status, answer = raw_request(running.url, (head + signed_headers(body, stale) + "\r\n").encode() + body)
    assert status == 401 and b"behind the collector" in answer
    assert raw_request(running.url, (head + "\r\n").encode() + body)[0] == 401
    assert running.collector.store.list_runs() == []
    assert not (home / "rejected").exists()  # unauthenticated bodies never reach the disk


def test_replayed_report_is_409_and_stored_once(running):
    text = report_json()
    body = text.encode()
    request = (f"POST {REPORTS_PATH} HTTP/1.0\r\nContent-Length: {len(body)}\r\n" + signed_headers(body)
               + "\r\n").encode() + body
    assert raw_request(running.url, request)[0] == 201
    status, answer = raw_request(running.url, request)  # the very same bytes, within the time window
    assert status == 409 and json.loads(answer.split(b"\r\n\r\n", 1)[1])["duplicate"] is True
    assert upload.post_report(running.url, TOKEN, text)[0] == 409  # signed afresh: still the same run_id
    assert len(running.collector.store.list_runs()) == 1
    assert running.collector.received == [json.loads(text)["run_id"]]


def test_oversized_body_is_413_without_reading_it(running):
    # the body never comes and the connection stays open: a server waiting for it would time the client out
    status, answer = raw_request(running.url, f"POST {REPORTS_PATH} HTTP/1.0\r\nContent-Length: "
                                              f"{DRAIN_LIMIT + 1}\r\n\r\n".encode(), half_close=False)
    assert status == 413 and b"at most 65536" in answer
    # a client that does send the big body still gets the 413 (not a reset connection)
    status, answer = upload.post_report(running.url, TOKEN, report_json(error="x" * 70_000))
    assert status == 413 and "70" in answer["error"]
    assert running.collector.store.list_runs() == [] and health(running.url) == 200


def test_no_content_length_is_411_and_a_bad_one_400(running):
    assert raw_request(running.url, f"POST {REPORTS_PATH} HTTP/1.0\r\n\r\n{{}}".encode())[0] == 411
    chunked = f"POST {REPORTS_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    assert raw_request(running.url, chunked.encode())[0] == 411
    assert raw_request(running.url, f"POST {REPORTS_PATH} HTTP/1.0\r\nContent-Length: -3\r\n\r\n".encode())[0] == 400


def test_malformed_json_is_400_kept_aside_and_the_server_still_answers(running, home):
    body = b'{"run_id": "abc", oops'
    request = (f"POST {REPORTS_PATH} HTTP/1.0\r\nContent-Length: {len(body)}\r\n" + signed_headers(body)
               + "\r\n").encode() + body
    status, answer = raw_request(running.url, request)
    assert status == 400 and b"not valid JSON" in answer
    kept = sorted((home / "rejected").glob("*.body"))
    assert [p.read_bytes() for p in kept] == [body]
    assert "not valid JSON" in kept[0].with_suffix(".reason").read_text()
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["kept"] == kept[0].name
    assert health(running.url) == 200
    assert upload.post_report(running.url, TOKEN, report_json())[0] == 201


def test_report_failing_the_schema_is_400_and_kept(running, home):
    data = json.loads(report_json())
    data["schema_version"] = 7
    status, answer = upload.post_report(running.url, TOKEN, json.dumps(data))
    assert status == 400 and "schema_version 7 is not supported" in answer["error"]
    data["schema_version"], data["status"] = 2, "PERFECT"
    status, answer = upload.post_report(running.url, TOKEN, json.dumps(data))
    assert status == 400 and "status" in answer["error"]
    assert len(list((home / "rejected").glob("*.body"))) == 2
    assert running.collector.store.list_runs() == []


def test_rejected_bodies_are_bounded_oldest_removed(running, home):
    running.collector.max_rejected = 3
    for i in range(5):
        assert upload.post_report(running.url, TOKEN, f"not json {i}")[0] == 400
    kept = sorted((home / "rejected").glob("*.body"), key=lambda p: p.stat().st_mtime_ns)
    assert [p.read_text() for p in kept] == ["not json 2", "not json 3", "not json 4"]
    assert len(list((home / "rejected").glob("*.reason"))) == 3


def test_garbage_and_broken_connections_do_not_stop_the_server(running):
    status, answer = raw_request(running.url, b"\x16\x03\x01\x00\xa5garbage that is not http\r\n\r\n")
    assert b"Bad request" in answer  # http.server's own refusal
    assert raw_request(running.url, f"DELETE {REPORTS_PATH} HTTP/1.0\r\n\r\n".encode())[0] == 501
    status, answer = raw_request(running.url, f"POST {REPORTS_PATH} HTTP/1.0\r\nContent-Length: 100\r\n\r\n"
                                              f"{{\"short\": 1}}".encode())  # the client stops mid-body
    assert status == 400 and b"ended after 12 of 100 bytes" in answer
    assert raw_request(running.url, b"GET /nothing HTTP/1.0\r\n\r\n")[0] == 404
    assert health(running.url) == 200
    assert upload.post_report(running.url, TOKEN, report_json())[0] == 201


def test_one_log_line_per_request(running, caplog):
    with caplog.at_level(logging.INFO, logger="edgekit.results.server"):
        text = report_json()
        upload.post_report(running.url, TOKEN, text)
        upload.post_report(running.url, "wrong-token-wrong-token", text)
        health(running.url)
    lines = [r.getMessage() for r in caplog.records if r.name == "edgekit.results.server"]
    assert len(lines) == 3
    assert '"POST /api/v1/reports" 201' in lines[0] and json.loads(text)["run_id"] in lines[0]
    assert " 401 " in lines[1] and '"GET /api/v1/health" 200' in lines[2]


def test_reports_of_a_known_bundle_keep_its_manifest_summary(home):
    manifest = {"profile": {"id": "pixel8"}, "model": {"file": "m.onnx", "bytes": 777, "precision": "fp32"},
                "files": {"m.onnx": {"sha256": SHA}}, "plan": {"quant": "none"}}
    with serve_in_thread(home / "r.db", TOKEN, manifests=[manifest]) as running:
        text = report_json()
        assert upload.post_report(running.url, TOKEN, text)[0] == 201
        run = running.collector.store.get(json.loads(text)["run_id"])
    assert run.model_bytes == 777 and run.manifest["model_sha256"] == SHA and run.manifest["quant"] == "none"


def test_serve_command_prints_url_creates_token_logs_and_stops_on_ctrl_c(home):
    env = {**os.environ, "EDGEKIT_HOME": str(home)}
    env.pop("EDGEKIT_TOKEN", None)
    code = "from edgekit.results.cli import serve; serve(['--port', '0'])"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as typed in a terminal
    try:
        banner = [proc.stdout.readline() for _ in range(7)]  # read here: communicate() skips buffered lines
        assert banner[0].startswith("edgekit collector listening on http://127.0.0.1:"), banner
        url = banner[0].split()[-1]
        token = (home / "token").read_text().strip()
        assert oct((home / "token").stat().st_mode & 0o777) == "0o600"
        text = report_json()
        assert upload.post_report(url, token, text)[0] == 201
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as refused:  # the report page is not public
            urllib.request.urlopen(f"{url}/", timeout=10)
        assert refused.value.code == 401
        with urllib.request.urlopen(f"{url}/?token={token}", timeout=60) as page:
            body = page.read().decode()
        assert page.status == 200 and f"(run {json.loads(text)['run_id'][:12]})" in body
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert banner[3].split() == ["token", str(home / "token")] and f"--collector {url}" in banner[4]
    assert banner[5].split()[:2] == ["report", f"{url}/?token=$(cat"] and banner[6].startswith("Ctrl-C") and out == ""
    assert token not in err  # the page's token is never logged
    assert '"POST /api/v1/reports" 201' in err and "stopped" in err
    assert [r.run_id for r in ResultsStore(home / "results.db").list_runs()] == [json.loads(text)["run_id"]]


def test_an_unusable_database_is_503_so_the_runner_keeps_the_report(running, home):
    (home / "results.db").write_bytes(b"overwritten by something else" * 100)
    status, answer = upload.post_report(running.url, TOKEN, report_json())
    assert status == 503 and "cannot store reports right now" in answer["error"]
    assert health(running.url) == 200


def test_a_port_in_use_is_a_clear_error(home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ResultsError, match=f"cannot listen on 127.0.0.1:{port}.*--port"), \
                serve_in_thread(home / "r.db", TOKEN, port=port):
            pass

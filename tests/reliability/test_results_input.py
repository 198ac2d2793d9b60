"""Issue 10, defects 4, 8 and 10: what a device or a client sends cannot break `edgekit results`, the
collector answers every malformed request with its documented status, and $EDGEKIT_HOME is used only
when no other user can change what is in it."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from collector_client import TOKEN, health, raw_request, report_json, signed_headers
from edgekit_runner import upload

from edgekit.cli import cli
from edgekit.results import ResultsError
from edgekit.results.schema import ReportInvalid, parse_report
from edgekit.results.server import REPORTS_PATH, serve_in_thread
from edgekit.results.signing import load_token
from edgekit.results.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]


def _report(**changes) -> dict:
    r = json.loads(report_json())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            r[section][field] = value
        else:
            r[key] = value
    return r


def _post(url: str, body: bytes, token: str = TOKEN) -> tuple[int, dict]:
    status, answer = raw_request(url, f"POST {REPORTS_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                                      f"{signed_headers(body, token=token)}\r\n".encode() + body)
    return status, json.loads(answer.split(b"\r\n\r\n", 1)[1] or b"{}")


# ---------------------------------------------------------------- defect 4: stored strings are shown, not obeyed

def test_results_shows_rich_markup_from_a_device_as_text(home):
    store = ResultsStore()
    store.add(_report(device__node="lab[/]pi", bundle__profile="[bold red]x"))
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["results"])
    assert result.exit_code == 0, result.output
    assert "lab[/]pi" in result.output and "[bold red]x" in result.output


@pytest.mark.parametrize("created_at, why", [
    ("9999-12-31T23:59:59+00:00", "not a plausible time"),
    ("0001-01-01T00:00:00+00:00", "not a plausible time"),
    ("1969-12-31T23:59:59+00:00", "not a plausible time"),
    ("2026-01-01T00:00:00", "must be an ISO 8601 time with a time zone"),
    ("2026-01-01T00:00:00+25:00", "must be an ISO 8601 time with a time zone"),
])
def test_implausible_or_zoneless_run_times_are_refused(created_at, why):
    with pytest.raises(ReportInvalid, match=why):
        parse_report(_report(created_at=created_at))


def test_a_board_without_a_clock_reports_1970_and_is_stored(home):
    assert ResultsStore().add(_report(created_at="1970-01-01T00:00:07+00:00"))


def test_a_future_dated_report_cannot_pin_itself_first(home):
    store = ResultsStore()
    with pytest.raises(ReportInvalid):
        store.add(_report(created_at="9999-01-01T00:00:00+00:00"))
    store.add(_report())
    assert len(store.list_runs()) == 1


# ---------------------------------------------------------------- defect 10: the collector's edge cases

@pytest.fixture
def running(home):
    with serve_in_thread(home / "results.db", TOKEN, max_body=64 * 1024, rejected_dir=home / "rejected") as running:
        yield running


@pytest.mark.parametrize("body, fragment", [
    (json.dumps(_report(created_at="0001-01-01T00:00:00+00:00")).encode(), "created_at"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nested too deeply"),
    (json.dumps(_report()).replace('"p50": 1.25', '"p50": NaN').encode(), "non-standard JSON value NaN"),
    (json.dumps(_report()).replace('"p50": 1.25', '"p50": Infinity').encode(), "non-standard JSON value Infinity"),
    (json.dumps(_report()).replace('"p50": 1.25', '"p50": 1e999').encode(), "non-finite number"),
])
def test_malformed_signed_bodies_are_400_never_500(running, body, fragment):
    status, answer = _post(running.url, body)
    assert status == 400 and fragment in answer["error"], answer
    assert health(running.url) == 200
    assert running.collector.store.list_runs() == []


@pytest.mark.parametrize("length", ["²".encode("latin-1"), "١٢".encode(), b"12a", b"-5", b" "])
def test_odd_content_lengths_get_an_answer(running, length):
    """Header bytes are decoded as Latin-1: 0xB2 is "²", which str.isdigit() accepts and int() refuses."""
    status, answer = raw_request(running.url, f"POST {REPORTS_PATH} HTTP/1.1\r\nHost: x\r\n".encode()
                                 + b"Content-Length: " + length + b"\r\n\r\n")
    assert status == 400 and b"is not a byte count" in answer
    assert health(running.url) == 200


def test_results_json_stays_standard_json_with_nan_from_an_old_store(home):
    store = ResultsStore()
    store.add(_report())
    import sqlite3

    with sqlite3.connect(store.path) as conn:  # a row written before reports were checked for NaN
        report = json.loads(conn.execute("SELECT report FROM runs").fetchone()[0])
        report["latency_ms"]["p50"] = float("nan")
        conn.execute("UPDATE runs SET report = ?, latency_p50_ms = ?", (json.dumps(report), float("nan")))
    out = CliRunner().invoke(cli, ["results", "--json"])
    assert out.exit_code == 0 and "NaN" not in out.output
    assert json.loads(out.output)[0]["report"]["latency_ms"]["p50"] is None


def test_idle_connections_cannot_starve_the_collector(home):
    """More silent connections than handler threads: the rest get an immediate 503 (the uploader retries),
    and a connection that trickles its request is closed at the deadline, freeing its thread."""
    with serve_in_thread(home / "r.db", TOKEN, max_handlers=4, request_deadline_s=2.0) as running:
        host, port = running.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(4)]
        time.sleep(0.3)
        t0 = time.monotonic()
        status, answer = raw_request(running.url, b"GET /api/v1/health HTTP/1.0\r\n\r\n")
        assert status == 503 and b"retry" in answer and time.monotonic() - t0 < 2
        for s in idle:  # the watchdog closes them after the deadline: each sees its connection end
            s.settimeout(10)
            assert s.recv(100) == b""
            s.close()
        assert health(running.url) == 200
        text = report_json()
        assert upload.post_report(running.url, TOKEN, text)[0] == 201


# ---------------------------------------------------------------- defect 8: $EDGEKIT_HOME

def _serve(home_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_TOKEN"} | {"EDGEKIT_HOME": home_env}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", "serve", "--port", "0"], capture_output=True,
                          text=True, env=env, timeout=60, cwd=ROOT)


def test_serve_with_an_unusable_home_is_a_one_line_error(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    proc = _serve(str(tmp_path / "a-file"))
    assert proc.returncode == 7 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: cannot use") and len(proc.stderr.strip().splitlines()) == 1


def test_a_world_writable_home_is_refused(tmp_path):
    home = tmp_path / "shared"
    home.mkdir()
    home.chmod(0o777)
    proc = _serve(str(home))
    assert proc.returncode == 7 and "can be written by other users (mode 777)" in proc.stderr
    assert list(home.iterdir()) == []  # no token, no database written there


def test_a_token_file_of_another_user_is_refused(home, monkeypatch):
    home.mkdir(mode=0o700)
    token = home / "token"
    token.write_text("t" * 64)
    token.chmod(0o600)
    real_fstat, ident = os.fstat, (token.stat().st_dev, token.stat().st_ino)

    def fstat_as_if_another_user_owned_it(fd):  # root could chown; any user can run this test
        st = real_fstat(fd)
        if (st.st_dev, st.st_ino) != ident:
            return st
        fields = list(st)
        fields[stat.ST_UID] = st.st_uid + 1
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", fstat_as_if_another_user_owned_it)
    with pytest.raises(ResultsError, match="belongs to another user"):
        load_token()


def test_a_planted_rejected_symlink_is_never_written_through(home, tmp_path):
    home.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.mkdir()
    for i in range(3):
        (victim / f"precious-{i}.body").write_text("keep")
    (home / "rejected").symlink_to(victim)
    with serve_in_thread(home / "results.db", TOKEN) as running:
        running.collector.max_rejected = 1
        for _ in range(3):
            assert _post(running.url, b'{"not": "a report"}')[0] == 400
    assert sorted(p.name for p in victim.iterdir()) == [f"precious-{i}.body" for i in range(3)]


def test_the_collector_reports_are_kept_in_a_private_rejected_folder(home):
    with serve_in_thread(home / "results.db", TOKEN) as running:
        status, answer = _post(running.url, b'{"not": "a report"}')
    kept = home / "rejected" / answer["kept"]
    assert status == 400 and kept.read_bytes() == b'{"not": "a report"}'
    assert stat.S_IMODE((home / "rejected").stat().st_mode) == 0o700

"""The real runner posting a real bundle's report to the real collector: stored once; with the
collector down the report waits in the spool and is delivered exactly once when it is back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from edgekit.results.server import serve_in_thread
from edgekit.results.store import ResultsStore

pytestmark = pytest.mark.slow

TOKEN = "c0ffee" * 8
FAST = ["--runs", "3", "--min-seconds", "0", "--warmup", "1", "--warmup-seconds", "0"]


def run_runner(bundle, *args, home):
    env = {**os.environ, "EDGEKIT_TOKEN": TOKEN, "EDGEKIT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "edgekit_runner", str(bundle), *FAST, *args],
                          capture_output=True, text=True, env=env, timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runner_delivers_to_the_collector_and_spools_while_it_is_down(built, tmp_path):
    bundle = built("jetson-orin-nano")
    manifest = json.loads((bundle / "manifest.json").read_text())
    db = tmp_path / "results.db"
    with serve_in_thread(db, TOKEN, manifests=[manifest]) as collector:
        first = run_runner(bundle, "--collector", collector.url, home=tmp_path)
        assert first.returncode == 0, first.stderr
        run_id = json.loads(first.stdout)["run_id"]
        assert collector.collector.received == [run_id]
    runs = ResultsStore(db).list_runs()
    assert [r.run_id for r in runs] == [run_id]

    port = free_port()  # nothing listens there: the collector is down
    down = run_runner(bundle, "--collector", f"http://127.0.0.1:{port}", home=tmp_path)
    assert down.returncode == 0  # the measurement succeeded; delivery is a warning
    late_id = json.loads(down.stdout)["run_id"]
    assert "WARNING" in down.stderr and (tmp_path / "spool" / f"{late_id}.json").exists()

    with serve_in_thread(db, TOKEN, port=port, manifests=[manifest]) as collector:  # back up
        again = run_runner(bundle, "--collector", collector.url, home=tmp_path)
        assert again.returncode == 0, again.stderr
        new_id = json.loads(again.stdout)["run_id"]
        assert sorted(collector.collector.received) == sorted([late_id, new_id])  # spool flushed once
    assert not (tmp_path / "spool" / f"{late_id}.json").exists()
    assert sorted(r.run_id for r in ResultsStore(db).list_runs()) == sorted([run_id, late_id, new_id])


def test_collector_flag_needs_a_token(built, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "edgekit_runner", str(built("jetson-orin-nano")), "--collector",
                          "http://127.0.0.1:9"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "--collector needs $EDGEKIT_TOKEN" in out.stderr

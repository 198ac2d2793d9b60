"""Collector throughput and tail latency: 20 concurrent clients posting signed reports.

Each client thread posts ``--reports`` signed reports through the runner's own uploader call
(``edgekit_runner.upload.post_report``: one connection per report, as a device does), all clients
starting together. The collector is ``edgekit serve`` in its own process, as it is now (listen backlog
128, one store writer at a time) and as it was before issue 10 (socketserver's backlog of 5, handler
threads racing for SQLite's write lock, whose busy wait sleeps in growing steps), and with only the
backlog changed; the configurations alternate for ``--rounds`` rounds so that the host's noise hits all. Reported per
configuration: reports/s (median over rounds, with the range), per-request latency p50/p99/max over
all rounds, the requests that took over 1 s (a SYN dropped by a full backlog is retried after 1 s), and
those the kernel reset (a full accept queue; the uploader keeps such a report and sends it again).
Writes benchmarks/results/collector.{md,json}.

    .venv/bin/python benchmarks/collector.py [--clients 20] [--reports 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _results import write_results
from edgekit_runner import upload
from edgekit_runner.report import RunReport

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "b" * 64
# name -> (listen backlog, one writer at a time in the store)
CONFIGS = {"before: backlog 5, threads racing for SQLite's lock": (5, False),
           "backlog 128, threads racing for SQLite's lock": (128, False),
           "now: backlog 128, one writer at a time": (128, True)}
SERVE = """
import contextlib, sys
import edgekit.results.server as server, edgekit.results.store as store
server._Server.request_queue_size = int(sys.argv[1])
if sys.argv[2] == "race":
    init = store.ResultsStore.__init__
    def racing(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._write_lock = contextlib.nullcontext()
    store.ResultsStore.__init__ = racing
from edgekit.cli import cli
cli(["serve", "--port", sys.argv[3]], prog_name="edgekit")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report() -> str:
    return RunReport("OK", {"path": "/data/b", "profile": "pixel8", "format": "onnx", "backend": "cpu",
                            "precision": "fp32", "model_sha256": "5e" * 32},
                     latency_ms={"p50": 1.25, "median": 1.25, "p90": 1.5}, metrics={"accuracy": 0.95},
                     device={"node": "board"}).to_json()


def one_round(backlog: int, one_writer: bool, clients: int, reports: int) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "EDGEKIT_HOME": home, "EDGEKIT_TOKEN": TOKEN}
        server = subprocess.Popen([sys.executable, "-c", SERVE, str(backlog), "lock" if one_writer else "race",
                                   str(port)], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert "listening on" in server.stdout.readline()
            url = f"http://127.0.0.1:{port}"
            bodies = [[report() for _ in range(reports)] for _ in range(clients)]
            latencies: list[float] = []
            statuses: list[int] = []
            lock, start = threading.Lock(), threading.Barrier(clients + 1)

            def client(mine: list[str]) -> None:
                start.wait()
                for body in mine:
                    t0 = time.perf_counter()
                    try:
                        status, _ = upload.post_report(url, TOKEN, body, timeout=30)
                    except OSError:  # reset or refused: the uploader would keep it and retry later
                        status = 0
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        statuses.append(status)

            threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
            for t in threads:
                t.start()
            start.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert statuses.count(201) + statuses.count(0) == clients * reports, {s: statuses.count(s) for s in set(statuses)}
    return {"reports_per_s": statuses.count(201) / wall, "latencies_s": latencies, "failed": statuses.count(0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--reports", type=int, default=50, help="reports per client per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        order = list(CONFIGS.items()) if r % 2 == 0 else list(CONFIGS.items())[::-1]
        for name, (backlog, one_writer) in order:
            results[name].append(one_round(backlog, one_writer, args.clients, args.reports))
            print(f"round {r + 1} {name}: {results[name][-1]['reports_per_s']:.0f} reports/s", file=sys.stderr)
    rows = []
    for name, rounds in results.items():
        lat = sorted(x for rnd in rounds for x in rnd["latencies_s"])
        rates = [rnd["reports_per_s"] for rnd in rounds]

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, round(q / 100 * (len(lat) - 1)))] * 1000

        rows.append({"configuration": name, "clients": args.clients, "reports": len(lat),
                     "reports_per_s": statistics.median(rates), "reports_per_s_range": [min(rates), max(rates)],
                     "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": lat[-1] * 1000,
                     "over_1s": sum(x > 1.0 for x in lat), "failed": sum(rnd["failed"] for rnd in rounds)})
    table = ["| collector | stored reports/s (median, range) | p50 ms | p99 ms | max ms | requests over 1 s "
             "| connection reset |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lo, hi = row["reports_per_s_range"]
        table.append(f"| {row['configuration']} | {row['reports_per_s']:.0f} ({lo:.0f}–{hi:.0f}) | {row['p50_ms']:.1f} "
                     f"| {row['p99_ms']:.1f} | {row['max_ms']:.0f} | {row['over_1s']} of {row['reports']} "
                     f"| {row['failed']} |")
    note = (f"\n{args.clients} concurrent clients, {args.reports} signed reports each per round, one connection "
            f"per report, {args.rounds} alternating rounds, on this {os.cpu_count()}-CPU host (load average "
            f"{os.getloadavg()[0]:.2f} at the end). Command: `.venv/bin/python benchmarks/collector.py`.")
    write_results("collector", "Collector: throughput and tail latency, 20 concurrent clients",
                  "\n".join(table) + "\n" + note, rows)
    print("\n".join(table))


if __name__ == "__main__":
    main()

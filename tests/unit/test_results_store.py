"""The results store (real SQLite files): idempotent inserts, migrations, filters, compare; the report
schema the host validates with; the `edgekit results` command over a store."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from click.testing import CliRunner
from edgekit_runner import report as runner_report
from manifests import manifest

from edgekit.results import ResultsError
from edgekit.results.cli import results
from edgekit.results.schema import SUPPORTED_VERSIONS, ReportInvalid, parse_report
from edgekit.results.store import COLUMNS, LATEST, MIGRATIONS, ResultsStore, migrate

SHA_A, SHA_B = "a1" * 32, "b2" * 32


def make_report(*, node="board-1", profile="pixel8", sha=SHA_A, p50=2.0, p90=3.0, accuracy=0.9,
                created_at=None, status="OK", path="/data/edgekit/pixel8", **extra) -> dict:
    """A report as the runner writes it (its own dataclass and JSON writer)."""
    r = runner_report.RunReport(status, {"path": path, "profile": profile, "format": "executorch",
                                         "backend": "xnnpack", "precision": "int8", "model_sha256": sha},
                                latency_ms={"p50": p50, "median": p50, "p90": p90}, metrics={"accuracy": accuracy},
                                device={"node": node}, **extra)
    if created_at:
        r.created_at = created_at
    return json.loads(r.to_json())


MANIFEST = {"created_at": "2026-01-01T00:00:00Z", "profile": {"id": "pixel8", "name": "Google Pixel 8"},
            "model": {"file": "model.pte", "format": "executorch", "backend": "xnnpack", "precision": "int8",
                      "bytes": 19752, "runtime": "executorch"},
            "files": {"model.pte": {"sha256": SHA_A, "bytes": 19752}, "eval.npz": {"sha256": "c3" * 32, "bytes": 100}},
            "plan": {"quant": "int8"}, "validation": {"where": "target-runtime", "value": 0.97},
            "versions": {"executorch": "1.5.1"}}


@pytest.fixture
def store(tmp_path, monkeypatch) -> ResultsStore:
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    return ResultsStore()


def test_default_location_follows_edgekit_home(store, tmp_path):
    assert store.path == tmp_path / "results.db" and store.path.is_file()
    assert store.version == LATEST == len(MIGRATIONS)


def test_same_run_id_twice_keeps_the_first(store):
    first = make_report(p50=2.0)
    assert store.add(first) is True
    again = dict(first, status="MODEL_ERROR", latency_ms={"p50": 99.0, "p90": 99.0})
    assert store.add(again) is False
    runs = store.list_runs()
    assert [r.run_id for r in runs] == [first["run_id"]]
    assert runs[0].status == "OK" and runs[0].latency_p50_ms == 2.0 and runs[0].report == first


def test_concurrent_inserts_of_one_run_store_it_once(store):
    report, outcomes = make_report(), []
    threads = [threading.Thread(target=lambda: outcomes.append(store.add(report))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False] * 7 + [True]
    assert len(store.list_runs()) == 1


def test_columns_come_from_the_report_and_the_manifest(store):
    report = make_report(memory={"peak_rss_load_mb": 40.5, "peak_rss_run_mb": 52.25, "model_file_bytes": 1})
    store.add(report, manifest=MANIFEST)
    run = store.get(report["run_id"])
    assert (run.device_id, run.profile, run.format, run.backend, run.precision) == (
        "board-1", "pixel8", "executorch", "xnnpack", "int8")
    assert (run.latency_p50_ms, run.latency_p90_ms, run.accuracy) == (2.0, 3.0, 0.9)
    assert run.model_bytes == 19752  # the manifest's size wins over the runner's stat
    assert run.peak_rss_mb == 52.25
    assert run.manifest["model_sha256"] == SHA_A and run.manifest["quant"] == "int8"
    assert "files" not in run.manifest and run.created_at == report["created_at"]


def test_infra_error_report_takes_what_it_lacks_from_the_manifest(store):
    r = runner_report.RunReport(runner_report.INFRA_ERROR, {"path": "/b"}, error="cannot read bundle /b")
    store.add(json.loads(r.to_json()), manifest=MANIFEST)
    run = store.get(r.run_id)
    assert (run.status, run.profile, run.precision, run.latency_p50_ms, run.peak_rss_mb) == (
        "INFRA_ERROR", "pixel8", "int8", None, None)


def test_migrates_an_empty_file(tmp_path):
    store = ResultsStore(tmp_path / "sub" / "r.db")
    with sqlite3.connect(store.path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert sorted(columns) == sorted(COLUMNS)


def test_migrates_a_version_1_file_and_backfills_size(tmp_path):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:1]) == 1
    report = make_report()
    conn.execute("INSERT INTO runs (run_id, schema_version, created_at, received_at, status, report, manifest) "
                 "VALUES (?, 1, ?, ?, 'OK', ?, ?)", (report["run_id"], report["created_at"], report["created_at"],
                                                     json.dumps(report), json.dumps({"model": {"bytes": 4321}})))
    conn.close()
    store = ResultsStore(path)
    assert store.version == LATEST
    run = store.get(report["run_id"])
    assert run.model_bytes == 4321 and run.peak_rss_mb is None and run.report == report


def test_a_failing_migration_step_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "r.db"
    ResultsStore(path)
    conn = sqlite3.connect(path, isolation_level=None)
    broken = (*MIGRATIONS, "CREATE TABLE extra (x INTEGER);\nSELECT * FROM no_such_table;")
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        migrate(conn, broken)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall() == []
    conn.close()


def test_refuses_a_newer_schema_and_a_file_that_is_not_a_database(tmp_path):
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(ResultsError, match=f"schema version {LATEST + 1} is newer"):
        ResultsStore(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ResultsError, match="cannot be used"):
        ResultsStore(junk)
    assert junk.read_bytes() == b"this is not sqlite" * 100


def test_list_filters_and_orders_newest_first(store):
    old = make_report(node="pi-a", profile="raspberry-pi-5", sha=SHA_B, path="/home/pi/b",
                      created_at="2026-01-01T10:00:00+00:00")
    mid = make_report(node="pi-a", profile="pixel8", created_at="2026-01-02T10:00:00+00:00")
    new = make_report(node="phone", profile="pixel8", created_at="2026-01-03T09:00:00-03:00")  # 12:00 UTC
    for r in (mid, old, new):
        store.add(r)

    def ids(runs):
        return [r.run_id for r in runs]

    assert ids(store.list_runs()) == [new["run_id"], mid["run_id"], old["run_id"]]
    assert store.get(new["run_id"]).created_at == "2026-01-03T12:00:00+00:00"
    assert ids(store.list_runs(device="pi-a")) == [mid["run_id"], old["run_id"]]
    assert ids(store.list_runs(device="pixel8")) == [new["run_id"], mid["run_id"]]
    assert ids(store.list_runs(bundle=SHA_B[:10])) == [old["run_id"]]
    assert ids(store.list_runs(bundle="/home/pi/b")) == [old["run_id"]]
    assert ids(store.list_runs(device="pi-a", bundle=SHA_A)) == [mid["run_id"]]
    assert ids(store.list_runs(limit=1)) == [new["run_id"]]
    assert store.list_runs(device="nowhere") == []


def test_get_by_unique_prefix(store):
    a = make_report()
    store.add(a)
    assert store.get(a["run_id"][:6].upper()).run_id == a["run_id"]
    with pytest.raises(ResultsError, match="no run"):
        store.get("0000ffff")
    with pytest.raises(ResultsError, match="not a run id"):
        store.get("zz%")
    b = make_report()
    b["run_id"] = a["run_id"][:6] + "0" * 26
    store.add(b)
    with pytest.raises(ResultsError, match="matches several runs"):
        store.get(a["run_id"][:6])


def test_compare_gives_before_after_deltas(store):
    before = make_report(p50=2.0, p90=4.0, accuracy=0.90, memory={"peak_rss_run_mb": 80.0})
    after = make_report(p50=1.5, p90=3.0, accuracy=0.88, memory={"peak_rss_run_mb": 60.0})
    store.add(before, manifest=MANIFEST)
    store.add(after, manifest=dict(MANIFEST, model=dict(MANIFEST["model"], bytes=5000)))
    rows = {d.metric: d for d in store.compare(before["run_id"], after["run_id"])}
    assert rows["latency p50 (ms)"].delta == -0.5 and rows["latency p50 (ms)"].change_pct == -25.0
    assert rows["latency p90 (ms)"].change_pct == -25.0
    assert rows["accuracy"].delta == pytest.approx(-0.02)
    assert (rows["model size (bytes)"].before, rows["model size (bytes)"].after) == (19752, 5000)
    assert rows["peak RSS (MB)"].delta == -20.0


# ---------------------------------------------------------------- schema


def test_the_runners_own_report_validates():
    assert runner_report.SCHEMA_VERSION in SUPPORTED_VERSIONS
    report = parse_report(runner_report.RunReport("OK", {"path": "/b"}).to_json())
    assert report.schema_version == runner_report.SCHEMA_VERSION and report.status == "OK"


def test_a_schema_1_report_validates_and_extra_keys_are_kept():
    data = dict(make_report(), schema_version=1, newer_field={"x": 1})
    data["latency_ms"]["p999"] = 7.0
    report = parse_report(data)
    assert report.schema_version == 1 and report.latency_ms["p999"] == 7.0
    assert report.model_dump(exclude_unset=True)["newer_field"] == {"x": 1}


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 3}, "schema_version 3 is not supported"),
    ({"schema_version": True}, "schema_version True is not supported"),
    ({"status": "FINE"}, "status"),
    ({"run_id": "../../etc/passwd"}, "run_id"),
    ({"created_at": "2026-01-01T00:00:00"}, "created_at"),  # no time zone
    ({"bundle": {"profile": "pixel8"}}, "bundle.path"),
])
def test_invalid_reports_are_refused_with_the_field_named(change, message):
    with pytest.raises(ReportInvalid, match=message):
        parse_report(dict(make_report(), **change))


def test_not_json_or_not_an_object_is_refused():
    with pytest.raises(ReportInvalid, match="not valid JSON"):
        parse_report(b"{nope")
    with pytest.raises(ReportInvalid, match="must be a JSON object"):
        parse_report(b"[1, 2]")


# ---------------------------------------------------------------- edgekit results


def test_results_command_lists_filters_and_compares(store, tmp_path):
    a = make_report(p50=2.0, created_at="2026-01-01T00:00:00+00:00")
    b = make_report(p50=1.0, node="phone", sha=SHA_B, created_at="2026-01-02T00:00:00+00:00")
    store.add(a)
    store.add(b)
    cli = CliRunner(env={"COLUMNS": "150"})
    out = cli.invoke(results, [], catch_exceptions=False)
    assert out.exit_code == 0 and a["run_id"][:8] in out.output and b["run_id"][:8] in out.output
    assert out.output.index(b["run_id"][:8]) < out.output.index(a["run_id"][:8])
    listed = json.loads(cli.invoke(results, ["--device", "phone", "--json"]).output)
    assert [r["run_id"] for r in listed] == [b["run_id"]] and listed[0]["report"] == b
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps(manifest(files=MANIFEST["files"])))  # its model is SHA_A
    listed = json.loads(cli.invoke(results, ["--bundle", str(bundle), "--json"]).output)
    assert [r["run_id"] for r in listed] == [a["run_id"]]
    rows = json.loads(cli.invoke(results, ["--compare", a["run_id"][:8], b["run_id"][:8], "--json"]).output)
    assert rows[0] == {"metric": "latency p50 (ms)", "before": 2.0, "after": 1.0, "delta": -1.0,
                       "change_pct": -50.0}
    table = cli.invoke(results, ["--compare", a["run_id"][:8], b["run_id"][:8]])
    assert table.exit_code == 0 and "-50.0%" in table.output
    missing = cli.invoke(results, ["--compare", "abcdef12", a["run_id"]])
    assert missing.exit_code != 0 and isinstance(missing.exception, ResultsError)

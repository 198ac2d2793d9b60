"""The results store: one SQLite file of runs, schema migrated in versioned steps.

Each row is one run: the facts ``edgekit results`` filters, sorts and compares on
(device, bundle, format/backend/precision, latency p50/p90, accuracy, size, peak memory),
next to the whole report and the bundle's manifest summary as JSON. ``run_id`` is the
primary key and inserts are idempotent: a report stored twice is kept once.

The schema version is SQLite's ``PRAGMA user_version``; :data:`MIGRATIONS` lists the SQL
steps, and opening a store applies the missing ones in order, each in its own transaction
together with the version bump (a failed step leaves the file as it was). A file newer
than this code is refused rather than guessed at.

Every call opens its own short connection, so one store may be shared by the
collector's request threads and by other processes (SQLite's locking, 30 s busy wait).

>>> store = ResultsStore()                      # $EDGEKIT_HOME/results.db  # doctest: +SKIP
>>> store.add(report_dict, manifest=manifest)  # True if new, False if that run_id was stored  # doctest: +SKIP
>>> [r.run_id for r in store.list_runs(device="pixel8", limit=5)]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgekit.results import ResultsError, checked_home
from edgekit.results.schema import RunReport, parse_report

DB_NAME = "results.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: one row per run; the report and the manifest summary kept whole as JSON
    """
    CREATE TABLE runs (
        run_id         TEXT PRIMARY KEY,
        schema_version INTEGER NOT NULL,
        created_at     TEXT NOT NULL,
        received_at    TEXT NOT NULL,
        status         TEXT NOT NULL,
        device_id      TEXT,
        profile        TEXT,
        bundle_path    TEXT,
        format         TEXT,
        backend        TEXT,
        precision      TEXT,
        model_sha256   TEXT,
        latency_p50_ms REAL,
        latency_p90_ms REAL,
        accuracy       REAL,
        report         TEXT NOT NULL,
        manifest       TEXT
    );
    CREATE INDEX runs_created_at ON runs (created_at);
    """,
    # 2: size and peak memory (schema-2 reports measure memory); size backfilled from stored
    #    manifests (schema-1 reports have no memory section); lookups by device and by model
    """
    ALTER TABLE runs ADD COLUMN model_bytes INTEGER;
    ALTER TABLE runs ADD COLUMN peak_rss_mb REAL;
    UPDATE runs SET model_bytes = json_extract(manifest, '$.model.bytes') WHERE manifest IS NOT NULL;
    CREATE INDEX runs_device ON runs (device_id, profile);
    CREATE INDEX runs_model ON runs (model_sha256);
    """,
    # 3: task metrics kept generically: the task, its headline metric and value on each run, and every numeric
    #    metric a task reports in run_metrics (backfilled from the stored reports; schema-1/2 runs are classifiers)
    """
    ALTER TABLE runs ADD COLUMN task TEXT;
    ALTER TABLE runs ADD COLUMN metric TEXT;
    ALTER TABLE runs ADD COLUMN metric_value REAL;
    CREATE TABLE run_metrics (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        name   TEXT NOT NULL,
        value  REAL NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    UPDATE runs SET task = coalesce(json_extract(report, '$.metrics.task'), 'classification'),
                    metric = json_extract(report, '$.metrics.metric')
        WHERE json_valid(report) AND json_type(report, '$.metrics') = 'object';
    UPDATE runs SET metric_value = (SELECT m.value FROM json_each(runs.report, '$.metrics') AS m
                                    WHERE m.key = runs.metric AND m.type IN ('integer', 'real'))
        WHERE metric IS NOT NULL;
    INSERT INTO run_metrics (run_id, name, value)
        SELECT runs.run_id, m.key, m.value FROM runs, json_each(runs.report, '$.metrics') AS m
        WHERE json_valid(runs.report) AND json_type(runs.report, '$.metrics') = 'object'
              AND m.type IN ('integer', 'real');
    """,
)
LATEST = len(MIGRATIONS)

COLUMNS = ("run_id", "schema_version", "created_at", "received_at", "status", "device_id", "profile",
           "bundle_path", "format", "backend", "precision", "model_sha256", "latency_p50_ms", "latency_p90_ms",
           "accuracy", "model_bytes", "peak_rss_mb", "task", "metric", "metric_value", "report", "manifest")
SKIPPED_METRICS = ("n_samples", "nonfinite_outputs", "embedding_dim")  # counts, not quality: not compared


@dataclass(frozen=True)
class Run:
    """One stored run (a row of ``runs``, JSON columns decoded)."""

    run_id: str
    schema_version: int
    created_at: str
    received_at: str
    status: str
    device_id: str | None
    profile: str | None
    bundle_path: str | None
    format: str | None
    backend: str | None
    precision: str | None
    model_sha256: str | None
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    accuracy: float | None
    model_bytes: int | None
    peak_rss_mb: float | None
    task: str | None
    metric: str | None  # the task's headline metric (accuracy, retrieval_agreement)
    metric_value: float | None
    report: dict[str, Any]
    manifest: dict[str, Any] | None

    @property
    def metrics(self) -> dict[str, float]:
        """Every numeric metric the task reported."""
        return {k: v for k, v in (self.report.get("metrics") or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def summary(self) -> dict[str, Any]:
        """Every column but the two JSON documents."""
        return {c: getattr(self, c) for c in COLUMNS if c not in ("report", "manifest")}


@dataclass(frozen=True)
class Delta:
    """One compared quantity: ``after - before`` and the change in percent of ``before``."""

    metric: str
    before: float | None
    after: float | None

    @property
    def delta(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before

    @property
    def change_pct(self) -> float | None:
        return None if self.delta is None or not self.before else 100.0 * self.delta / self.before


COMPARED = (("latency p50 (ms)", "latency_p50_ms"), ("latency p90 (ms)", "latency_p90_ms"),
            ("model size (bytes)", "model_bytes"), ("peak RSS (MB)", "peak_rss_mb"))


def default_db_path() -> Path:
    return checked_home() / DB_NAME


def model_sha256(manifest: dict[str, Any]) -> str | None:
    """The sha256 of a bundle's model file, as its manifest lists it."""
    return manifest.get("files", {}).get(manifest.get("model", {}).get("file"), {}).get("sha256")


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a bundle manifest worth keeping next to each run (no file list, no eval arrays)."""
    model = manifest.get("model", {})
    validation = manifest.get("validation", {})
    return {
        "created_at": manifest.get("created_at"),
        "profile": {k: manifest.get("profile", {}).get(k) for k in ("id", "name", "soc", "budgets")},
        "project": manifest.get("project"),
        "task": (manifest.get("task") or {}).get("kind") or (manifest.get("project") or {}).get("task"),
        "model": {k: model.get(k) for k in ("file", "format", "backend", "precision", "runtime", "bytes")},
        "model_sha256": model_sha256(manifest),
        "quant": manifest.get("plan", {}).get("quant"),
        "validation": {k: validation.get(k) for k in ("where", "metric", "value", "max_abs_error",
                                                      "top1_agreement", "reference_value", "accuracy_drop")},
        "budgets": manifest.get("budgets"),  # the build's checks (edgekit.budgets), None before they existed
        "versions": manifest.get("versions"),
    }


class ResultsStore:
    """A results database file; created and migrated to :data:`LATEST` when opened."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self._write_lock = threading.Lock()
        if self.path.is_dir():
            raise ResultsError(f"results database {self.path} is a folder; pass a file path with --db")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ResultsError(f"cannot create the folder for results database {self.path}: {e}") from None
        with self._connect() as conn:
            migrate(conn)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # transactions are explicit
        except sqlite3.Error as e:
            raise ResultsError(f"cannot open results database {self.path}: {e}") from None
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            raise ResultsError(f"results database {self.path} cannot be used: {e}; "
                               "point --db or EDGEKIT_HOME at another file") from None
        finally:
            conn.close()

    @property
    def version(self) -> int:
        with self._connect() as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    def add(self, report: RunReport | dict[str, Any], manifest: dict[str, Any] | None = None,
            received_at: datetime | None = None) -> bool:
        """Store a run; True if it is new, False if that ``run_id`` was already stored (kept as it was)."""
        if not isinstance(report, RunReport):
            report = parse_report(report)
        summary = manifest_summary(manifest) if manifest is not None else None
        row = _row(report, summary, received_at or datetime.now(UTC))
        # One writer at a time within this process: SQLite's own busy wait polls with growing sleeps, so
        # threads racing for its write lock (the collector's handlers) waited up to 2 s (benchmarks/collector.py).
        metrics = [(report.run_id, k, v) for k, v in report.metrics.items() if _number(v) is not None]
        with self._write_lock, self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(f"INSERT OR IGNORE INTO runs ({', '.join(row)}) "
                                   f"VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
                new = cur.rowcount == 1
                if new:
                    conn.executemany("INSERT INTO run_metrics (run_id, name, value) VALUES (?, ?, ?)", metrics)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return new

    def get(self, run_id: str) -> Run:
        """One run by its id or a unique prefix of it (at least 4 hex digits, as `edgekit results` shows)."""
        prefix = run_id.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{4,64}", prefix):
            raise ResultsError(f"{run_id!r} is not a run id; give at least 4 hex digits as `edgekit results` shows")
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE run_id LIKE ? || '%' ORDER BY run_id LIMIT 2",
                                (prefix,)).fetchall()
        if not rows:
            raise ResultsError(f"no run {run_id} in {self.path}; list the stored runs with `edgekit results`")
        if len(rows) > 1:
            raise ResultsError(f"run id prefix {run_id} matches several runs ({rows[0]['run_id']}, "
                               f"{rows[1]['run_id']}, ...); give more digits")
        return _run(rows[0])

    def list_runs(self, device: str | None = None, bundle: str | None = None, limit: int | None = None) -> list[Run]:
        """Runs, newest first. ``device`` matches the device id (the runner's host name) or the profile id;
        ``bundle`` matches the bundle path as the runner reported it, or the model's sha256 (or a prefix of 8+
        hex digits)."""
        where, args = [], []
        if device:
            where.append("(device_id = ? OR profile = ?)")
            args += [device, device]
        if bundle:
            sha = bundle.lower()
            if re.fullmatch(r"[0-9a-f]{8,64}", sha):
                where.append("(bundle_path = ? OR model_sha256 LIKE ? || '%')")
                args += [bundle, sha]
            else:
                where.append("bundle_path = ?")
                args.append(bundle)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC, received_at DESC, run_id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._connect() as conn:
            return [_run(r) for r in conn.execute(sql, args).fetchall()]

    def compare(self, before: str, after: str) -> list[Delta]:
        """Before/after of latency p50/p90, every task metric either run reports (its headline metric first),
        model size and peak RSS (None where a run lacks it)."""
        a, b = self.get(before), self.get(after)
        names = [n for n in dict.fromkeys([a.metric, b.metric, *a.metrics, *b.metrics])
                 if n and n not in SKIPPED_METRICS and (n in a.metrics or n in b.metrics)]
        rows = [Delta(label, getattr(a, col), getattr(b, col)) for label, col in COMPARED[:2]]
        rows += [Delta(n, a.metrics.get(n), b.metrics.get(n)) for n in names]
        return rows + [Delta(label, getattr(a, col), getattr(b, col)) for label, col in COMPARED[2:]]


def migrate(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Apply the steps after the file's ``user_version``, each with its version bump in one transaction."""
    while True:
        conn.execute("BEGIN IMMEDIATE")  # re-read under the write lock: another process may have migrated
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > len(migrations):
                raise ResultsError(f"results database schema version {current} is newer than this edgekit knows "
                                   f"({len(migrations)}); upgrade edgekit or use another --db / EDGEKIT_HOME")
            if current == len(migrations):
                conn.execute("COMMIT")
                return current
            for statement in _statements(migrations[current]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {current + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``Connection.executescript`` would commit mid-transaction)."""
    parts, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            parts.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]}")
    return parts


def _row(report: RunReport, manifest: dict[str, Any] | None, received_at: datetime) -> dict[str, Any]:
    model = (manifest or {}).get("model", {})
    bundle = report.bundle
    return {
        "run_id": report.run_id,
        "schema_version": report.schema_version,
        "created_at": report.created_at_utc,
        # microseconds: runs created in the same second keep the order they arrived in
        "received_at": received_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "status": report.status,
        "device_id": _text(report.device.get("node")),  # the runner's host name
        "profile": bundle.profile or (manifest or {}).get("profile", {}).get("id"),
        "bundle_path": bundle.path,
        "format": bundle.format or model.get("format"),
        "backend": bundle.backend or model.get("backend"),
        "precision": bundle.precision or model.get("precision"),
        "model_sha256": bundle.model_sha256 or (manifest or {}).get("model_sha256"),
        "latency_p50_ms": _number(report.latency_ms.get("p50"), report.latency_ms.get("median")),
        "latency_p90_ms": _number(report.latency_ms.get("p90")),
        "accuracy": _number(report.metrics.get("accuracy")),
        "model_bytes": _number(model.get("bytes"), report.memory.get("model_file_bytes")),
        "peak_rss_mb": peak_rss_mb(report.memory),
        "task": _text(report.metrics.get("task") or (manifest or {}).get("task")),
        "metric": _text(report.metrics.get("metric")),
        "metric_value": _number(report.metrics.get(str(report.metrics.get("metric")))),
        "report": json.dumps(report.model_dump(mode="json", exclude_unset=True), sort_keys=True),  # as sent
        "manifest": json.dumps(manifest, sort_keys=True) if manifest is not None else None,
    }


def peak_rss_mb(memory: dict[str, Any]) -> float | None:
    """The larger of the peaks while loading and while running (schema 2); None where neither was measured."""
    peaks = [_number(memory.get(k)) for k in ("peak_rss_load_mb", "peak_rss_run_mb")]
    return max((p for p in peaks if p is not None), default=None)


def _number(*values: Any) -> Any:
    """The first value that is a finite number (reports write an unmeasured figure as null), else None."""
    return next((v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and math.isfinite(v)), None)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _run(row: sqlite3.Row) -> Run:
    values = {c: row[c] for c in COLUMNS}
    values["report"] = json.loads(values["report"])
    values["manifest"] = json.loads(values["manifest"]) if values["manifest"] else None
    return Run(**values)

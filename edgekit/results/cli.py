"""``edgekit serve`` (the collector) and ``edgekit results`` (list and compare stored runs).

Both are plain click commands that ``edgekit.cli`` adds to its group; the store, the
server and rich are imported inside them so that ``edgekit --help`` stays fast.

    edgekit serve [--host 127.0.0.1] [--port 8765] [--db PATH] [--bundle DIR ...]
    edgekit results [--device D] [--bundle B] [--limit N] [--json] [--db PATH]
    edgekit results --compare RUN_A RUN_B [--json]     # before (A) / after (B)
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from edgekit_runner.safejson import finite

DEFAULT_PORT = 8765

_db_option = click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
                          help="Results database  [default: $EDGEKIT_HOME/results.db, else ~/.edgekit/results.db]")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; the token still guards it).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port (0: any free port; the URL is printed).")
@_db_option
@click.option("--bundle", "bundles", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Store reports of this bundle's model with its manifest summary (repeatable).")
def serve(host: str, port: int, db: Path | None, bundles: tuple[Path, ...]) -> None:
    """Receive signed run reports over HTTP and store them, until Ctrl-C."""
    from edgekit.results.server import REPORTS_PATH, make_server, new_collector, server_url
    from edgekit.results.signing import TOKEN_ENV, ensure_token

    token, token_source = ensure_token()
    server = make_server(new_collector(db, token, manifests=[_manifest(b) for b in bundles]), host, port)
    url = server_url(server)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("edgekit.results.server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token_hint = f"${TOKEN_ENV}" if token_source.startswith("$") else f"$(cat {token_source})"
    try:
        click.echo(f"edgekit collector listening on {url}\n"
                   f"  reports  POST {url}{REPORTS_PATH}\n"
                   f"  store    {server.collector.store.path}\n"
                   f"  token    {token_source}\n"
                   f"  runner   EDGEKIT_TOKEN={token_hint} python -m edgekit_runner BUNDLE --collector {url}\n"
                   f"  report   {url}/?token={token_hint}  (every stored run, with plots; &device=D&bundle=B narrow it)\n"
                   "Ctrl-C to stop")
        sys.stdout.flush()
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM (systemctl stop), SIGHUP: the way a collector stops
        from edgekit.signals import clear

        clear()
        click.echo("stopped", err=True)
    finally:
        server.server_close()
        logger.removeHandler(handler)


@click.command()
@click.argument("bundles", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", "-d", default=None,
              help="Every stored run on this device id or for this profile id (with no BUNDLE).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
              show_default=True, help="Folder for report.html, report.md and the plots.")
@click.option("--limit", "-n", type=click.IntRange(1, 1_000_000), default=200, show_default=True,
              help="Newest N stored runs (with --device or no BUNDLE).")
@_db_option
def report(bundles: tuple[Path, ...], device: str | None, out: Path, limit: int, db: Path | None) -> None:
    """Before/after report of BUNDLEs and their stored runs, or of every stored run for --device:
    report.html (self-contained: tables, budgets, plots as inline SVG) and report.md."""
    from edgekit.errors import ProjectError
    from edgekit.report import collect, write_report
    from edgekit.results.store import ResultsStore, default_db_path

    if bundles and device:
        raise ProjectError("give BUNDLE folders or --device, not both")
    path = db or default_db_path()
    store = ResultsStore(path) if path.exists() or not bundles else None  # bundles alone need no store
    written = write_report(collect(bundles, store=store, device=device, limit=limit), out)
    for name in ("html", "md"):
        click.echo(f"{written[name]}")


@click.command()
@click.option("--device", "-d", default=None, help="Only runs on this device id or for this profile id.")
@click.option("--bundle", "-b", default=None,
              help="Only runs of this bundle: a bundle folder here (matched by its model's sha256), "
                   "the bundle path as the runner reported it, or a model sha256 prefix (8+ hex digits).")
@click.option("--limit", "-n", type=click.IntRange(1, 1_000_000), default=20, show_default=True, help="Newest N runs.")
@click.option("--compare", nargs=2, metavar="RUN_A RUN_B", default=None,
              help="Before (A) / after (B): latency p50/p90, accuracy, size, peak memory. Ids or unique prefixes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_db_option
def results(device: str | None, bundle: str | None, limit: int, compare: tuple[str, str] | None, as_json: bool,
            db: Path | None) -> None:
    """List stored runs, newest first, or compare two."""
    from edgekit.results.store import ResultsStore, model_sha256

    store = ResultsStore(db)
    if compare:
        _print_compare(store, *compare, as_json)
        return
    if bundle and (Path(bundle) / "manifest.json").is_file():
        bundle = model_sha256(_manifest(Path(bundle))) or bundle
    runs = store.list_runs(device=device, bundle=bundle, limit=limit)
    if as_json:
        click.echo(json.dumps(finite([dict(r.summary(), report=r.report) for r in runs]), indent=2,
                              allow_nan=False))
        return
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if not runs:
        click.echo(f"no runs in {store.path}" + (" match these filters" if device or bundle else "") +
                   "; `edgekit bench BUNDLE --on TARGET` adds runs")
        return
    table = Table("run", "created (UTC)", "device", "format/backend precision", "status", "p50 ms", "p90 ms",
                  "task metric", box=box.SIMPLE_HEAD, caption=f"{len(runs)} run(s) in {store.path}")
    for i in (0, 4, 5, 6, 7):  # ids, statuses and figures are never cut; names wrap
        table.columns[i].no_wrap = True
    for r in runs:  # every stored string came from a device: shown as text, never as rich markup
        table.add_row(r.run_id[:8], escape(r.created_at[:16].replace("T", " ")),
                      escape(f"{r.profile or '?'} on {r.device_id or '?'}"),
                      escape(f"{r.format or '?'}/{r.backend or '?'} {r.precision or ''}".strip()),
                      escape(r.status) if r.status == "OK" else f"[red]{escape(r.status)}[/]",
                      fmt_number(r.latency_p50_ms, ".3f"), fmt_number(r.latency_p90_ms, ".3f"),
                      escape(f"{r.metric} " if r.metric else "") + fmt_metric(r.metric, r.metric_value))
    Console(highlight=False).print(table)


def _print_compare(store: Any, run_a: str, run_b: str, as_json: bool) -> None:
    rows = store.compare(run_a, run_b)
    if as_json:
        click.echo(json.dumps(finite([{"metric": d.metric, "before": d.before, "after": d.after, "delta": d.delta,
                                       "change_pct": d.change_pct} for d in rows]), indent=2, allow_nan=False))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    a, b = store.get(run_a), store.get(run_b)
    table = Table("", f"before {a.run_id[:8]}", f"after {b.run_id[:8]}", "delta", "change")
    for d in rows:
        if d.metric in FRACTIONS:  # a fraction: values in %, the delta in percentage points
            points = None if d.delta is None else 100 * d.delta
            cells = [fmt_number(d.before, ".2%"), fmt_number(d.after, ".2%"), fmt_number(points, "+.2f") + " pt"]
        else:
            spec = ".0f" if "bytes" in d.metric else ".3f" if "(m" in d.metric else ".4f"
            cells = [fmt_number(d.before, spec), fmt_number(d.after, spec), fmt_number(d.delta, "+" + spec)]
        change = fmt_number(d.change_pct, "+.1f") + ("%" if d.change_pct is not None else "")
        table.add_row(escape(d.metric), *cells, change)
    Console(highlight=False).print(table)


def _manifest(bundle: Path) -> dict[str, Any]:
    from edgekit.bundle import read_manifest

    return read_manifest(bundle)


def fmt_number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


FRACTIONS = ("accuracy", "reference_accuracy", "top1_agreement", "retrieval_agreement",
             "reference_retrieval_agreement")  # shown in %, their deltas in points


def fmt_metric(name: str | None, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):  # a row stored by an older edgekit
        return "-" if value is None else str(value)[:20]
    return fmt_number(value, ".2%" if name in FRACTIONS else ".4f")

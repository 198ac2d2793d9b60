"""`edgekit report` and the collector's report page, rendered by a real headless Chromium: the page opens with no
network, the plots are there, and the table shows the numbers the bundle and the results store hold."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.results.server import serve_in_thread
from edgekit.results.store import ResultsStore, model_sha256

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # screenshots kept for a person to look at


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert found, "no Chromium on this machine: `bash .ci/prereqs.sh` installs Debian's chromium (make test runs it)"
    return found


def browse(url: str, screenshot: Path | None = None) -> str:
    """The DOM after Chromium loaded and rendered ``url`` (headless, no network needed), and a screenshot."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--window-size=1300,2400", "--user-data-dir=" + str(ARTIFACTS / ".chromium-profile")]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*base, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=120)
    return subprocess.run([*base, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout


class Cells(HTMLParser):
    """The rendered table's cells by row and column, and which figures hold an <svg>."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.figures: dict[str, bool] = {}
        self._row = self._col = self._figure = None
        self.external: list[str] = []
        self.history: dict[str, dict[str, dict[str, str]]] = {}  # "device · bundle" -> run id -> column -> text
        self._section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-device" in a:
            self._section = f"{a['data-device']} · {a['data-bundle']}"
            self.history[self._section] = {}
        elif tag == "tr" and "data-run" in a and self._section:
            self._row = ("history", a["data-run"])
            self.history[self._section][a["data-run"]] = {}
        elif tag == "td" and isinstance(self._row, tuple):
            self._col = a.get("data-col")
            self.history[self._section][self._row[1]][self._col] = ""
        elif tag == "tr" and "data-row" in a:
            self._row = a["data-row"]
            self.rows[self._row] = {}
        elif tag == "td" and self._row is not None:
            self._col = a.get("data-col")
            self.rows[self._row][self._col] = ""
        elif tag == "figure":
            self._figure = a.get("id")
            self.figures[self._figure] = False
        elif tag == "svg" and self._figure:
            self.figures[self._figure] = True
        for key in ("src", "href"):
            if re.match(r"(https?:)?//", a.get(key) or ""):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "tr":
            self._row = None
        elif tag == "td":
            self._col = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if isinstance(self._row, tuple) and self._col:
            self.history[self._section][self._row[1]][self._col] += data
        elif self._row is not None and self._col:
            self.rows[self._row][self._col] += data


def parse(dom: str) -> Cells:
    cells = Cells()
    cells.feed(dom)
    return cells


@pytest.fixture(scope="module")
def measured(built, tmp_path_factory):
    """An int8 digits bundle (fp32 beside it) and two real runs of it, stored; the newest is returned."""
    bundle = built("raspberry-pi-5", "--quant", "int8")
    folder = tmp_path_factory.mktemp("report")
    store = ResultsStore(folder / "results.db")
    runs = []
    for i in range(2):
        subprocess.run([sys.executable, "-m", "edgekit_runner", str(bundle), "--runs", "20", "--min-seconds", "0.05",
                        "--warmup-seconds", "0", "--out", str(folder / f"run{i}.json")], check=True, capture_output=True)
        runs.append(json.loads((folder / f"run{i}.json").read_text()))
        store.add(runs[-1], manifest=json.loads((bundle / "manifest.json").read_text()))
    return bundle, store, runs


def test_the_report_renders_in_chromium_with_the_stored_numbers(measured, tmp_path):
    bundle, store, (first, run) = measured
    result = CliRunner().invoke(cli, ["report", str(bundle), "--db", str(store.path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    page = tmp_path / "r" / "report.html"
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"report.html", "report.md", "report-size.svg",
                                                          "report-latency.svg", "report-pareto-accuracy.svg"}
    dom = browse(page.as_uri(), ARTIFACTS / "report.png")
    cells = parse(dom)
    assert cells.external == []  # self-contained: nothing to fetch
    assert cells.figures == {"plot-pareto-accuracy": True, "plot-size": True, "plot-latency": True,
                             "plot-history": True}
    manifest = json.loads((bundle / "manifest.json").read_text())
    rows = list(cells.rows.values())
    assert [r["stage"] for r in rows] == ["build", "build", "bench run", "bench run"]  # fp32, int8 export, 2 runs
    fp32, int8, _, ran = rows
    assert fp32["size"] == f"{manifest['baseline']['bytes'] / 1024:.1f} KiB"
    assert int8["size"] == f"{manifest['model']['bytes'] / 1024:.1f} KiB"
    assert int8["metric"] == f"accuracy {manifest['validation']['value']:.2%}"
    host = manifest["validation"]["host_latency_ms"]
    assert int8["latency p50 / p90"] == f"{host['p50']:.3f} / {host['p90']:.3f} ms"
    assert ran["latency p50 / p90"] == f"{run['latency_ms']['p50']:.3f} / {run['latency_ms']['p90']:.3f} ms"
    assert ran["metric"] == f"accuracy {run['metrics']['accuracy']:.2%}"
    peak = max(run["memory"]["peak_rss_load_mb"], run["memory"]["peak_rss_run_mb"])
    assert ran["peak memory"] == f"{peak:.1f} MB" and run["device"]["node"] in ran["measured on"]
    assert int8["budgets"] == ran["budgets"] == "pass"  # raspberry-pi-5's budgets, met here
    assert "yes" in {r["Pareto"] for r in rows}
    shot = ARTIFACTS / "report.png"
    from PIL import Image

    with Image.open(shot) as image:  # rendered, not blank
        assert image.size == (1300, 2400) and len(image.convert("L").getcolors(1 << 16)) > 20
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"{run['latency_ms']['p50']:.3f} / {run['latency_ms']['p90']:.3f} ms" in md
    # the history: one device and bundle, both runs oldest first, the change from the first to the last
    sha = model_sha256(manifest)[:12]
    assert list(cells.history) == [f"{run['device']['node']} (raspberry-pi-5) · {bundle.name} ({sha})"]
    (runs,) = cells.history.values()
    assert list(runs) == [first["run_id"], run["run_id"]]
    for stored, shown in zip((first, run), runs.values()):
        assert shown["latency p50 / p90"] == f"{stored['latency_ms']['p50']:.3f} / {stored['latency_ms']['p90']:.3f} ms"
    a, b = first["latency_ms"]["p50"], run["latency_ms"]["p50"]
    assert f"{a:.3f} → {b:.3f} ms p50 ({b / a - 1:+.1%})" in dom
    assert "## History per device and bundle" in md


def test_the_collectors_page_shows_the_store_to_the_token_holder(measured, tmp_path):
    bundle, store, runs = measured
    token = "t" * 32
    with serve_in_thread(store.path, token=token) as running:
        dom = browse(f"{running.url}/?token={token}", ARTIFACTS / "serve.png")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{running.url}/?token=wrong", timeout=10)
        sha = model_sha256(json.loads((bundle / "manifest.json").read_text()))
        narrowed = browse(f"{running.url}/?token={token}&device=raspberry-pi-5&bundle={sha[:16]}")
        elsewhere = browse(f"{running.url}/?token={token}&device=pixel8")
    assert refused.value.code == 401
    cells = parse(dom)
    assert cells.figures.get("plot-latency") and cells.figures.get("plot-history") and cells.external == []
    for shown, run in zip(cells.rows.values(), runs, strict=True):  # oldest first
        assert shown["latency p50 / p90"] == f"{run['latency_ms']['p50']:.3f} / {run['latency_ms']['p90']:.3f} ms"
        assert f"(run {run['run_id'][:12]})" in shown["source"]
    (history,) = cells.history.values()
    assert list(history) == [r["run_id"] for r in runs]
    assert [r["source"] for r in parse(narrowed).rows.values()] == [r["source"] for r in cells.rows.values()]
    assert parse(elsewhere).rows == {} and "no stored runs for pixel8" in elsewhere

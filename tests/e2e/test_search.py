"""`edgekit build --search` on the digits example, small: recipes across formats measured by real runs, the
pick on the measured Pareto front, every trial in the report, an interrupted search resumed without measuring
again, and an impossible budget said by how much with the budget exit code (the closest trial still ships).
The acceptance run (12 recipes, with KD) is in the closing note; here 2 recipes (two formats, the search's first
trials) without KD keep CI short."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.bundle import verify


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _search(root: Path, out: Path, *extra: str, interrupt_at: str | None = None) -> subprocess.CompletedProcess:
    """``edgekit build --search`` in a child process; with ``interrupt_at``, Ctrl-C once that text was printed."""
    args = [sys.executable, "-m", "edgekit.cli", "build", "-d", "raspberry-pi-5", "--project", str(root), "--search",
            "--no-distill", "--out", str(out), *extra]
    if interrupt_at is None:
        return subprocess.run(args, capture_output=True, text=True, timeout=900, preexec_fn=_default_signals)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_default_signals)
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        seen.append(line)
        if interrupt_at in line:
            time.sleep(1.0)  # into that trial's build
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(seen)
    rest, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, "".join(seen) + rest, "")


def _trials(output: str) -> list[str]:
    """The recipes a search measured, from its progress lines ('trial #N (k of M): RECIPE')."""
    found = re.findall(r"trial #\d+ \(\d+ of \d+\): (.+)", " ".join(output.split()).replace(" trial #", "\ntrial #"))
    return [re.split(r" (?:build|run on|failed:) ", f)[0] for f in found]


@pytest.fixture(scope="module")
def searched(root, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    out = tmp_path_factory.mktemp("search") / "pi5"
    import os

    os.environ["EDGEKIT_HOME"] = str(home)  # the runs go into this store (children inherit it)
    try:
        first = _search(root, out, "--max-trials", "2", interrupt_at="(2 of 2)")
        again = _search(root, out, "--max-trials", "2")
        yield out, first, again, home
    finally:
        os.environ.pop("EDGEKIT_HOME", None)


@pytest.mark.slow
def test_an_interrupted_search_resumes_without_measuring_again(searched):
    out, first, again, _ = searched
    assert first.returncode == 130, first.stdout
    before, after = _trials(first.stdout), _trials(again.stdout + again.stderr)
    assert len(before) == 2  # the first measured, the second interrupted in its build
    assert before[0] not in after and len(after) == 1, (before, after)  # the measured one is not run again
    assert again.returncode == 0, again.stdout + again.stderr
    assert not out.with_name("pi5").exists() or verify(out)[1] == []


@pytest.mark.slow
def test_the_search_ships_the_fastest_within_budgets_from_the_pareto_front(searched):
    out, _, again, home = searched
    manifest, problems = verify(out)
    assert problems == []
    picked = manifest["search"]
    assert picked["pareto"] and picked["within_budgets"]
    study = out.with_name("pi5.search") / "study.db"
    import optuna

    trials = optuna.load_study(study_name=optuna.get_all_study_summaries(f"sqlite:///{study}")[0].study_name,
                               storage=f"sqlite:///{study}").get_trials()
    measured = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "cached_from" not in t.user_attrs]
    assert len(measured) == 2 and len({json.loads(t.params["recipe"])["format"] for t in measured}) >= 2
    assert any(t.state == optuna.trial.TrialState.FAIL for t in trials)  # the interrupted one, kept
    values = {t.number: t.values for t in measured}  # (accuracy, latency p50, size, peak memory)
    pick = values[picked["trial"]]

    def dominates(a, b):
        better = (a[0] >= b[0], a[1] <= b[1], a[2] <= b[2], a[3] <= b[3])
        return all(better) and a != b

    assert not any(dominates(v, pick) for v in values.values())  # on the measured Pareto front
    assert pick[1] == picked["measured"]["latency_p50_ms"]
    assert min(v[1] for n, v in values.items() if not any(dominates(w, v) for w in values.values())) == pick[1]
    # the runs are in the results store, and the report shows every trial
    from edgekit.results.store import ResultsStore

    stored = {r.run_id for r in ResultsStore(home / "results.db").list_runs(limit=100)}
    assert {t.user_attrs["run_id"] for t in measured} <= stored
    page = (out.with_name("pi5.search") / "report.html").read_text()
    for t in measured:
        assert f"trial #{t.number}: " in page
    assert "picked" in page


@pytest.mark.slow
def test_an_impossible_budget_names_the_miss_and_ships_the_closest(searched, root):
    out, _, _, _ = searched
    result = _search(root, out, "--max-trials", "2", "--force", "--budget", "latency_p90_ms=0.001")
    assert result.returncode == 10, result.stdout + result.stderr
    text = " ".join((result.stdout + result.stderr).split())
    assert _trials(result.stdout) == []  # nothing measured again: the budgets apply to the stored runs
    assert "no trial is within every budget" in text
    found = re.search(r"latency_p90_ms: no trial is <= 0.001 ms; the best is ([\d.e-]+) ms \(off by ([\d.e-]+) ms\)",
                      text)
    assert found and float(found.group(2)) == pytest.approx(float(found.group(1)) - 0.001, rel=1e-3)
    manifest, problems = verify(out)
    assert problems == [] and manifest["search"]["within_budgets"] is False

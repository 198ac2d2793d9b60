"""Issue 10, defects 2 and 3: SIGINT, SIGTERM and SIGHUP stop a build at any stage with 128 + the signal
number and nothing written: no bundle, no staging folder, no lock, no scratch folder, no log; and what
builds killed outright (SIGKILL) left in the temp directory is removed by the next build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_interrupted_build.py")


def _default_signals() -> None:
    """The child starts with the default dispositions, as from a terminal, whatever the test runner was
    started with (under `nohup` SIGHUP is ignored, and edgekit rightly keeps an inherited SIG_IGN: that case
    is test_a_signal_the_parent_ignores_stays_ignored)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _start(mode: str, out: Path, tmp: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(SCRIPT), mode, str(out), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)


def _assert_nothing_written(out: Path, tmp: Path) -> None:
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir() if p.name != "edgekit-home") == ["tmp"]  # no .out.*
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("edgekit-")) == []


def test_sigint_swallowed_inside_a_gc_callback_still_stops_the_build(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    proc = _start("gc", out, tmp)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted by SIGINT; nothing was written"
    _assert_nothing_written(out, tmp)


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    marker.unlink()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signals_during_export_stop_the_build_and_clean_up(sig, tmp_path):
    out, tmp, marker = tmp_path / "out", tmp_path / "tmp", tmp_path / "in-export"
    tmp.mkdir()
    proc = _start("wait", out, tmp, str(marker))
    _wait_for(marker, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines()[-1] == f"error: interrupted by {sig.name}; nothing was written"
    _assert_nothing_written(out, tmp)


def test_the_next_build_removes_what_a_killed_build_left(tmp_path):
    """SIGKILL cannot be handled: the staging folder, the scratch folder and the log stay behind until the
    next build, which removes those of dead builds (and keeps a failed build's log, named in its error)."""
    out, tmp, marker = tmp_path / "out", tmp_path / "tmp", tmp_path / "in-export"
    tmp.mkdir()
    kept = tmp / "edgekit-build-failed-123-def.log"
    kept.write_text("the log a failed build's error message points at")
    killed = _start("wait", out, tmp, str(marker))
    _wait_for(marker, killed)
    killed.kill()
    killed.communicate(timeout=60)
    left = sorted(p.name for p in [*tmp.iterdir(), *tmp_path.iterdir()] if p.name.startswith((".out", "edgekit-")))
    pid = killed.pid
    expected = [".out.lock", f".out.partial-{pid}-", f"edgekit-build-{pid}-", kept.name, f"edgekit-work-{pid}-"]
    assert len(left) == len(expected) and all(n.startswith(e) for n, e in zip(left, expected)), left
    second = _start("wait", out, tmp, str(marker))
    _wait_for(marker, second)
    now = sorted(p.name for p in [*tmp.iterdir(), *tmp_path.iterdir()] if p.name.startswith((".out", "edgekit-")))
    assert not (set(left) - {kept.name, ".out.lock"}) & set(now), now  # the dead build's leftovers are gone
    assert kept.exists()
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=120) == 143
    kept.unlink()
    _assert_nothing_written(out, tmp)


# ---------------------------------------------------------------- the collector, nohup, critical sections

def _serve(tmp_path: Path, preexec=_default_signals) -> subprocess.Popen:
    env = {**os.environ, "EDGEKIT_HOME": str(tmp_path / "home"), "EDGEKIT_TOKEN": "t" * 32, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", "--port", "0"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
    assert "listening on" in proc.stdout.readline()
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_the_collector_stops_cleanly_on_ctrl_c_and_sigterm(sig, tmp_path):
    """Stopping is how a collector ends (Ctrl-C, `systemctl stop`): exit 0, "stopped", no error."""
    proc = _serve(tmp_path)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and stderr.strip().splitlines()[-1] == "stopped", stderr


def test_a_signal_the_parent_ignores_stays_ignored(tmp_path):
    """`nohup edgekit serve`: SIGHUP was set to be ignored before edgekit started; it must stay so."""
    proc = _serve(tmp_path, preexec=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None  # still serving
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_a_signal_inside_a_critical_section_waits_for_its_end():
    from edgekit import signals

    done = []
    with pytest.raises(signals.Interrupted) as caught:
        with signals.handle_signals():
            with signals.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10_000):  # the handler runs in here, and only records
                    pass
                done.append("swap finished")
    assert done == ["swap finished"] and caught.value.completed and caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


def test_handlers_are_restored_and_a_caught_interrupt_is_not_raised_again():
    from edgekit import signals

    before = {s: signal.getsignal(s) for s in signals.HANDLED}
    with signals.handle_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):
                pass
        except KeyboardInterrupt:
            signals.clear()  # what `edgekit serve` does: stopping was the point
    assert {s: signal.getsignal(s) for s in signals.HANDLED} == before

"""Issue 10, the same class of defect found elsewhere (an adversarial pass over every command's options):
odd values give one line and the documented exit code before any work, and nothing a user owns is
overwritten or deleted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from collector_client import TOKEN, report_json
from edgekit_runner import upload
from edgekit_runner.__main__ import main as runner_main
from edgekit_runner.manifest import NAME as MANIFEST

from edgekit.cli import cli
from edgekit.results.server import serve_in_thread
from edgekit.transport.base import TargetError, parse_target

ROOT = Path(__file__).resolve().parents[2]
BUILD = ["build", "-d", "jetson-orin-nano", "--project", str(ROOT), "--quant", "none", "--no-distill"]


def _one_line(result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    last = result.output.strip().splitlines()[-1]
    assert (last.startswith("error: ") or last.startswith("Error: ")) and fragment in last, result.output


# ---------------------------------------------------------------- edgekit distill --out

def test_distill_never_overwrites_a_previous_run_without_force_or_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "student.safetensors").write_text("MINE")
    result = CliRunner().invoke(cli, ["distill", "--project", str(ROOT), "--epochs", "1", "--out", str(out)])
    _one_line(result, 2, "already holds student.safetensors; pass --resume to continue that run, --force")
    assert (out / "student.safetensors").read_text() == "MINE"


def test_distill_out_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "sub"):
        result = CliRunner().invoke(cli, ["distill", "--project", str(ROOT), "--epochs", "1", "--out", str(out)])
        _one_line(result, 2, "cannot use --out")
        assert "loading" not in result.output  # refused before the teacher was loaded


def test_distill_seed_beyond_what_torch_takes_is_a_usage_error():
    result = CliRunner().invoke(cli, ["distill", "--project", str(ROOT), "--seed", "99999999999999999999"])
    _one_line(result, 2, "--seed")


# ---------------------------------------------------------------- budgets

@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_accuracy_budget_must_be_finite(value, tmp_path):
    result = CliRunner().invoke(cli, [*BUILD, "--max-accuracy-drop", value, "--out", str(tmp_path / "o")])
    _one_line(result, 3, "--max-accuracy-drop must be >= 0 points and finite")


def test_profile_budgets_must_be_finite(tmp_path):
    text = (ROOT / "device_profiles" / "jetson-orin-nano.toml").read_text()
    (tmp_path / "jet2.toml").write_text(text.replace('id = "jetson-orin-nano"', 'id = "jet2"')
                                        .replace("max_model_mb = ", "max_model_mb = inf #"))
    result = CliRunner().invoke(cli, ["--profiles-dir", str(tmp_path), "profiles", "show", "jet2"])
    _one_line(result, 2, "budgets.max_model_mb")


# ---------------------------------------------------------------- build --out

def test_out_inside_an_existing_bundle_is_refused(bundle_copy):
    before = sorted(p.name for p in bundle_copy.rglob("*"))
    result = CliRunner().invoke(cli, [*BUILD, "--out", str(bundle_copy / "sub")])
    _one_line(result, 6, f"is inside the bundle {bundle_copy}")
    assert sorted(p.name for p in bundle_copy.rglob("*")) == before


def test_out_below_a_file_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = CliRunner().invoke(cli, [*BUILD, "--out", str(tmp_path / "a-file" / "b")])
    _one_line(result, 6, "cannot create")


@pytest.mark.parametrize("what", ["folder", "fifo", "symlink", "user-text"])
def test_an_odd_lock_file_is_refused_and_left_alone(what, tmp_path):
    lock = tmp_path / ".b.lock"
    if what == "folder":
        lock.mkdir()
    elif what == "fifo":
        os.mkfifo(lock)
    elif what == "symlink":
        (tmp_path / "target").write_text("keep")
        lock.symlink_to(tmp_path / "target")
    else:
        lock.write_text("my notes")
    result = CliRunner().invoke(cli, [*BUILD, "--out", str(tmp_path / "b")])
    assert result.exit_code == 6, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert lock.exists() or lock.is_symlink()
    if what == "user-text":
        assert lock.read_text() == "my notes"
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- the runner's options

@pytest.mark.parametrize("args", [["--min-seconds", "nan"], ["--max-seconds", "inf"], ["--warmup-seconds", "1e300"],
                                  ["--cpus", "0-300000000"], ["--cpus", "99999999999999999999"]])
def test_runner_timing_and_cpu_options_are_usage_errors(args, bundle_copy, capsys):
    with pytest.raises(SystemExit) as exit_:
        runner_main([str(bundle_copy), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("python -m edgekit_runner: error: ")


@pytest.mark.parametrize("url, token, fragment", [
    ("notaurl", "x" * 24, "is not an http:// or https:// URL"),
    ("http://[::1", "x" * 24, "is not a URL"),
    ("http://127.0.0.1:99999", "x" * 24, "is not a URL"),
    ("http://127.0.0.1:8765", "x" * 21 + "\udcff", "not valid text"),
])
def test_runner_collector_url_and_token_are_checked_first(url, token, fragment, bundle_copy, tmp_path):
    env_bytes = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in os.environ.items()}
    env_bytes[b"EDGEKIT_TOKEN"] = token.encode("utf-8", "surrogateescape")
    proc = subprocess.run([sys.executable, "-m", "edgekit_runner", str(bundle_copy), "--collector", url,
                           "--spool", str(tmp_path / "spool")], capture_output=True, env=env_bytes, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "spool").exists()


def test_runner_refuses_eval_data_that_does_not_fit_the_model(bundle_copy, capsys):
    with np.load(bundle_copy / "eval.npz") as npz:
        arrays = dict(npz)
    arrays["input.image"] = arrays["input.image"].astype(np.float64)
    np.savez(bundle_copy / "eval.npz", **arrays)
    data = (bundle_copy / "eval.npz").read_bytes()
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["files"]["eval.npz"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    assert runner_main([str(bundle_copy), "--runs", "1", "--min-seconds", "0"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "INFRA_ERROR" and "holds input.image as float64; 'image' is float32" in report["error"]


# ---------------------------------------------------------------- results, home, targets

def test_a_signed_report_with_an_integer_beyond_int64_is_400(home):
    report = json.loads(report_json())
    report["latency_ms"]["p50"] = 10 ** 30
    with serve_in_thread(home / "r.db", TOKEN, rejected_dir=home / "rejected") as running:
        status, answer = upload.post_report(running.url, TOKEN, json.dumps(report))
    assert status == 400 and "beyond int64" in answer["error"]


def test_results_limit_and_an_unresolvable_home(monkeypatch):
    result = CliRunner().invoke(cli, ["results", "--limit", "99999999999999999999"])
    assert result.exit_code == 2 and "--limit" in result.output
    monkeypatch.setenv("EDGEKIT_HOME", "~nosuchuser-edgekit/x")
    result = CliRunner().invoke(cli, ["results"])
    _one_line(result, 7, "cannot find the edgekit home")


@pytest.mark.parametrize("target, fragment", [("ssh://pi@host:0", "the port must be a number from 1 to 65535"),
                                              ("ssh://pi@host?identity=/no/such/key", "identity file /no/such/key")])
def test_ssh_targets_are_checked(target, fragment):
    with pytest.raises(TargetError, match=fragment.replace("?", r"\?")):
        parse_target(target)

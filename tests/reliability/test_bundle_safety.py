"""Issue 10, defects 1, 7 and 9: --force never deletes what is not an intact bundle, a replace is one step
for readers and builds to one folder are serialized, and no file in a bundle can make a reader hang,
run out of memory or print a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from edgekit_runner.manifest import NAME as MANIFEST

from edgekit.bundle import verify
from edgekit.cli import cli

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_bundle_worker.py")
FAST = ["--runs", "1", "--min-seconds", "0", "--warmup", "0", "--warmup-seconds", "0"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "edgekit-home")


def _build_force(out: Path) -> CliRunner:
    return CliRunner().invoke(cli, ["build", "-d", "jetson-orin-nano", "--project", str(ROOT), "--quant", "none",
                                    "--no-distill", "--out", str(out), "--force"])


def _rewrite_manifest(bundle: Path, edit) -> None:
    m = json.loads((bundle / MANIFEST).read_text())
    edit(m)
    (bundle / MANIFEST).write_text(json.dumps(m))


# ---------------------------------------------------------------- defect 1: --force and other people's folders

def _web_app(folder: Path) -> None:
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"name": "My PWA", "start_url": "/", "icons": []}))
    (folder / "index.html").write_text("<h1>precious</h1>")


def _bundle_plus_user_file(folder: Path, onnx_bundle: Path) -> None:
    import shutil

    shutil.copytree(onnx_bundle, folder)
    (folder / "notes.md").write_text("my measurements, not written by edgekit")


def _manifest_copied_elsewhere(folder: Path, onnx_bundle: Path) -> None:
    folder.mkdir()
    (folder / MANIFEST).write_bytes((onnx_bundle / MANIFEST).read_bytes())  # a real manifest, other files
    (folder / "model.onnx").write_text("my own model")


@pytest.mark.parametrize("make", ["web-app", "bundle-plus-user-file", "manifest-copied-elsewhere"])
def test_force_refuses_a_folder_that_is_not_an_intact_bundle(make, tmp_path, onnx_bundle):
    out = tmp_path / "out"
    {"web-app": lambda: _web_app(out), "bundle-plus-user-file": lambda: _bundle_plus_user_file(out, onnx_bundle),
     "manifest-copied-elsewhere": lambda: _manifest_copied_elsewhere(out, onnx_bundle)}[make]()
    before = _tree(out)
    result = _build_force(out)
    assert result.exit_code == 6, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {out} is not an edgekit bundle that can be replaced") and "refusing" in line
    assert _tree(out) == before  # nothing deleted, nothing changed
    assert _names(tmp_path) == ["out"]  # no staging, no lock left


def test_force_replaces_an_intact_bundle(tmp_path, onnx_bundle):
    import shutil

    out = Path(shutil.copytree(onnx_bundle, tmp_path / "out"))
    (out / "edgekit_runner" / "__pycache__").mkdir(exist_ok=True)  # what running the bundle's runner copy leaves
    (out / "edgekit_runner" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    result = _build_force(out)
    assert result.exit_code == 0, result.output
    assert verify(out)[1] == [] and json.loads((out / MANIFEST).read_text())["created_at"]


# ---------------------------------------------------------------- defect 7: replace in one step, serialized builds

def _worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_reader_always_sees_one_whole_bundle_while_it_is_replaced(tmp_path):
    out, stop = tmp_path / "b", tmp_path / "stop"
    writer = _worker("write", str(out), "1")
    assert json.loads(writer.communicate(timeout=60)[0])["written"] == 1
    reader = _worker("read", str(out), str(stop))
    time.sleep(0.5)  # let the reader start looping
    writer = _worker("write", str(out), "60")
    wrote = json.loads(writer.communicate(timeout=120)[0])
    stop.touch()
    read = json.loads(reader.communicate(timeout=60)[0])
    assert wrote == {"written": 60, "refused": 0, "errors": []}
    assert read["reads"] > 20 and read["errors"] == []  # never no bundle, never a mix of two


def test_concurrent_builds_to_one_folder_are_serialized_with_a_clear_refusal(tmp_path):
    out = tmp_path / "b"
    writers = [_worker("write", str(out), "25") for _ in range(3)]
    results = [json.loads(w.communicate(timeout=180)[0]) for w in writers]
    assert [r["errors"] for r in results] == [[], [], []]  # only "another edgekit build ... is writing"
    assert [r["written"] + r["refused"] for r in results] == [25, 25, 25]
    assert sum(r["written"] for r in results) >= 1 and verify(out)[1] == []
    assert _names(tmp_path) == ["b"]


# ---------------------------------------------------------------- defect 9: what a bundle folder may hold

@pytest.mark.parametrize("plant", ["symlink-to-outside-dir", "fifo", "empty-folder", "symlink-to-file"])
def test_inspect_names_links_fifos_and_empty_folders(plant, bundle_copy, tmp_path):
    target = bundle_copy / "extra"
    if plant == "symlink-to-outside-dir":
        target.symlink_to(tmp_path)
    elif plant == "symlink-to-file":
        target.symlink_to(bundle_copy / "model.onnx")
    elif plant == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    _, problems = verify(bundle_copy)
    expected = {"symlink-to-outside-dir": "a symbolic link", "symlink-to-file": "a symbolic link", "fifo": "a FIFO",
                "empty-folder": "an empty folder"}[plant]
    assert problems == [f"extra: {expected} the manifest does not list"]
    result = CliRunner().invoke(cli, ["inspect", str(bundle_copy)])
    assert result.exit_code == 6 and f"extra: {expected}" in result.output


def test_inspect_flags_a_model_file_the_files_list_omits(bundle_copy):
    (bundle_copy / "other.onnx").write_bytes((bundle_copy / "model.onnx").read_bytes())

    def point_elsewhere(m):
        m["model"]["file"] = "other.onnx"

    _rewrite_manifest(bundle_copy, point_elsewhere)
    problems = verify(bundle_copy)[1]
    assert "other.onnx: the manifest's model file is not in its files list" in problems


def test_a_listed_file_replaced_by_a_fifo_is_a_problem_not_a_hang(bundle_copy):
    (bundle_copy / "model.onnx").unlink()
    os.mkfifo(bundle_copy / "model.onnx")
    t0 = time.monotonic()
    problems = verify(bundle_copy)[1]
    assert time.monotonic() - t0 < 5
    assert any(p.startswith("model.onnx:") and "a FIFO, not a regular file" in p for p in problems)


# VmHWM, not getrusage: a child's ru_maxrss starts at the parent's RSS at fork time (Linux carries it over exec)
RUN_AND_MEASURE = ("import re, sys; from edgekit_runner.__main__ import main; rc = main(sys.argv[1:]); "
                   "print('peak-rss-kb', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1], "
                   "file=sys.stderr); sys.exit(rc)")


def _run_runner(bundle: Path, timeout: float = 120) -> tuple[dict, str, int, float]:
    """Run the runner in a child process: (report, stderr, exit code, the child's own peak RSS in MB)."""
    proc = subprocess.run([sys.executable, "-c", RUN_AND_MEASURE, str(bundle), *FAST], capture_output=True,
                          text=True, timeout=timeout)
    peak_kb = int(proc.stderr.strip().splitlines()[-1].split()[-1])
    return json.loads(proc.stdout), proc.stderr, proc.returncode, peak_kb / 1024


def _relist(bundle: Path, name: str) -> None:
    data = (bundle / name).read_bytes()

    def update(m):
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    _rewrite_manifest(bundle, update)


def test_runner_truncated_eval_set_is_an_infra_error(bundle_copy):
    data = (bundle_copy / "eval.npz").read_bytes()
    (bundle_copy / "eval.npz").write_bytes(data[: len(data) // 2])
    _relist(bundle_copy, "eval.npz")  # the sha256 matches: the file itself is damaged
    report, stderr, rc, _ = _run_runner(bundle_copy)
    assert rc == 2 and report["status"] == "INFRA_ERROR" and "Traceback" not in stderr
    assert report["error"].startswith("cannot read the eval set:") and "\n" not in report["error"]


def test_runner_model_file_that_is_a_fifo_does_not_hang(bundle_copy):
    (bundle_copy / "model.onnx").unlink()
    os.mkfifo(bundle_copy / "model.onnx")
    report, stderr, rc, _ = _run_runner(bundle_copy, timeout=60)
    assert rc == 2 and report["status"] == "INFRA_ERROR" and "Traceback" not in stderr
    assert "a FIFO, not a regular file" in report["error"]


def _npz_bomb(path: Path, n_floats: int) -> None:
    """An .npz whose 'input.image' array is n_floats zeros: tiny compressed, huge loaded; written in chunks."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (n_floats,)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("input.image.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(1 << 24)
            for _ in range(n_floats * 4 // len(chunk)):
                f.write(chunk)
        for name in ("labels", "reference.logits"):
            with z.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, np.zeros(3, np.int64))


def test_runner_checks_eval_shapes_before_loading_a_compressed_bomb(bundle_copy):
    _npz_bomb(bundle_copy / "eval.npz", 1 << 28)  # 1 GiB of float32 zeros, about 1 MB compressed
    assert (bundle_copy / "eval.npz").stat().st_size < 2 << 20
    _relist(bundle_copy, "eval.npz")
    report, stderr, rc, peak_mb = _run_runner(bundle_copy)
    assert rc == 2 and report["status"] == "INFRA_ERROR" and "Traceback" not in stderr
    assert "array 'input.image' has shape [268435456] but is declared" in report["error"]
    assert peak_mb < 700, f"the runner reached {peak_mb:.0f} MB"  # loading it would take over 1024 MB


@pytest.mark.parametrize("plant", ["loop", "linked-folder"])
def test_links_inside_a_bundle_are_problems_everywhere_not_tracebacks(plant, bundle_copy, tmp_path, capsys):
    """A listed file that is a link to itself (a loop), or reached through a linked folder, is named by
    inspect and refused by the runner and by build --force, without a traceback."""
    if plant == "loop":
        (bundle_copy / "model.onnx").unlink()
        (bundle_copy / "model.onnx").symlink_to("model.onnx")
        expected = "model.onnx: a symbolic link, not a regular file"
    else:
        import shutil

        shutil.move(str(bundle_copy / "edgekit_runner"), tmp_path / "runner-elsewhere")
        (bundle_copy / "edgekit_runner").symlink_to(tmp_path / "runner-elsewhere")
        expected = "edgekit_runner/__init__.py: reached through the symbolic link edgekit_runner"
    assert expected in verify(bundle_copy)[1]
    result = CliRunner().invoke(cli, ["inspect", str(bundle_copy)])
    assert result.exit_code == 6 and expected in result.output
    assert _build_force(bundle_copy).exit_code == 6
    if plant == "loop":
        from edgekit_runner.__main__ import main as runner_main

        assert runner_main([str(bundle_copy), *FAST]) == 2
        report = json.loads(capsys.readouterr().out)
        assert "reached through the symbolic link model.onnx" in report["error"]

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from manifests import manifest

from edgekit.bundle import MANIFEST, BundleWriter, verify
from edgekit.cli import cli
from edgekit.errors import BundleError

MANIFEST_BASE = manifest(model__file="model.bin")


def write(out: Path, payload: bytes = b"model", force: bool = False) -> Path:
    with BundleWriter(out, force=force) as w:
        (w.staging / "model.bin").write_bytes(payload)
        (w.staging / "eval.npz").write_bytes(b"")
        (w.staging / "sub").mkdir()
        (w.staging / "sub" / "a.txt").write_text("a")
        return w.commit(MANIFEST_BASE)


def test_commit_writes_manifest_with_hashes(tmp_path):
    out = write(tmp_path / "b")
    manifest, problems = verify(out)
    assert problems == []
    assert set(manifest["files"]) == {"model.bin", "eval.npz", "sub/a.txt"}
    assert manifest["files"]["model.bin"]["bytes"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no staging left behind


def test_existing_output_is_refused_without_force(tmp_path):
    write(tmp_path / "b")
    with pytest.raises(BundleError, match="already exists; pass --force"):
        write(tmp_path / "b")


def test_force_replaces_atomically(tmp_path):
    write(tmp_path / "b", b"old")
    out = write(tmp_path / "b", b"newer", force=True)
    assert (out / "model.bin").read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_force_never_deletes_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "precious.txt").write_text("keep")
    with pytest.raises(BundleError, match="not an edgekit bundle"):
        write(tmp_path / "docs", force=True)
    assert (tmp_path / "docs" / "precious.txt").read_text() == "keep"


def test_failure_inside_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with BundleWriter(tmp_path / "b") as w:
            (w.staging / "model.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_during_force_keeps_old_bundle(tmp_path):
    write(tmp_path / "b", b"old")
    with pytest.raises(RuntimeError):
        with BundleWriter(tmp_path / "b", force=True) as w:
            (w.staging / "model.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert (tmp_path / "b" / "model.bin").read_bytes() == b"old"
    assert verify(tmp_path / "b")[1] == []


def test_stale_partial_of_dead_process_is_cleaned(tmp_path):
    stale = tmp_path / ".b.partial-999999999-abc"
    stale.mkdir()
    write(tmp_path / "b")
    assert not stale.exists()


def test_tampered_missing_and_unlisted_files_are_named(tmp_path):
    out = write(tmp_path / "b")
    (out / "model.bin").write_bytes(b"MODEL")
    (out / "sub" / "a.txt").unlink()
    (out / "extra.py").write_text("print('hi')")
    _, problems = verify(out)
    assert problems == ["model.bin: sha256 mismatch (file was modified)", "sub/a.txt: missing",
                        "extra.py: not listed in the manifest"]
    result = CliRunner().invoke(cli, ["inspect", str(out)])
    assert result.exit_code == 6
    assert "model.bin: sha256 mismatch" in result.output


def test_inspect_refuses_non_bundle(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 6 and "no manifest.json in" in result.output


def test_manifest_path_escape_is_refused(tmp_path):
    out = write(tmp_path / "b")
    m = json.loads((out / MANIFEST).read_text())
    m["files"]["../outside"] = {"sha256": "0" * 64, "bytes": 0}
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="files lists \"../outside\", which is not a relative path inside"):
        verify(out)


def test_bundle_folder_mode_follows_umask(tmp_path):
    out = write(tmp_path / "b")
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o777 & ~umask)

"""Bundles: a folder with the model file, manifest.json, eval.npz and a copy of the runner.

A bundle is staged in a hidden sibling folder (``.NAME.partial-PID-XXXX``) and
renamed into place only once complete, manifest last; an interrupted build
leaves no folder that looks like a bundle. ``--force`` replaces an existing
bundle atomically: the old one stays until the new one is complete.

>>> # with BundleWriter(Path("build/pixel8"), force=False) as w:
>>> #     (w.staging / "model.pte").write_bytes(...)
>>> #     w.commit(manifest)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgekit.errors import BundleError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_destination(out: Path, force: bool) -> None:
    """Fail before any work if ``out`` cannot be written."""
    if out.exists() or out.is_symlink():
        if not force:
            raise BundleError(f"{out} already exists; pass --force to replace it "
                              "(the old bundle is kept until the new one is complete)")
        if not (out / MANIFEST).is_file():
            raise BundleError(f"{out} exists and is not an edgekit bundle (no {MANIFEST}); "
                              "refusing to replace it even with --force; choose another --out")


class BundleWriter:
    def __init__(self, out: Path, force: bool = False):
        self.out = Path(out).absolute()
        self.force = force
        check_destination(self.out, force)
        self.staging: Path | None = None

    def __enter__(self) -> BundleWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(self.out)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-{os.getpid()}-",
                                             dir=self.out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.staging, 0o777 & ~umask)  # mkdtemp makes it 0700; a bundle is an ordinary folder
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every staged file into the manifest, write it last, and swap the folder in."""
        assert self.staging is not None
        manifest = dict(manifest, files=file_hashes(self.staging))
        tmp = self.staging / f".{MANIFEST}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.staging / MANIFEST)
        check_destination(self.out, self.force)  # something may have appeared meanwhile
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.staging, self.out)
        self.staging = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(self.out.parent)
        return self.out


def file_hashes(root: Path) -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}")
        and "__pycache__" not in p.parts
    }


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{path}: bundle schema_version {manifest.get('schema_version')!r} is not supported "
                          f"(supported: {SCHEMA_VERSION})")
    return manifest


def verify(bundle: Path) -> tuple[dict[str, Any], list[str]]:
    """The manifest and a list of problems (missing, changed or unlisted files); empty when intact."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    listed = manifest.get("files", {})
    problems = []
    for rel, meta in sorted(listed.items()):
        p = bundle / rel
        if not p.resolve().is_relative_to(bundle.resolve()):
            problems.append(f"{rel}: path escapes the bundle")
        elif not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 mismatch (file was modified)")
    for rel in file_hashes(bundle):
        if rel not in listed:
            problems.append(f"{rel}: not listed in the manifest")
    return manifest, problems


def _remove_stale_partials(out: Path) -> None:
    """Remove staging folders of builds whose process is gone (killed mid-way)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(p.name.split("partial-")[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

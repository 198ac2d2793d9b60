"""Bundles: a folder with the model file, manifest.json, eval.npz and a copy of the runner.

A bundle is staged in a hidden sibling folder (``.NAME.partial-PID-XXXX``) and swapped into place only
once complete, manifest last; an interrupted build leaves no folder that looks like a bundle, and the
next build removes the staging folders of builds that died.

``--force`` replaces an existing bundle, and only a bundle: a folder whose manifest passes the
schema, says edgekit wrote it, and whose files are exactly the ones it lists with their sha256. Anything
else (another tool's output that happens to hold a ``manifest.json``, a bundle with a file added)
is refused and left as it was. The replacement is one ``renameat2(RENAME_EXCHANGE)`` on Linux (macOS:
``renamex_np(RENAME_SWAP)``): a reader sees the old bundle or the new one, never none. Where the file
system cannot exchange, two renames leave a moment without a bundle; a build killed in that moment
leaves the old one as ``.NAME.old-PID``, which the next build puts back. Builds to the
same folder are serialized by a lock file beside it (``.NAME.lock``, there while a build runs); the
second one fails at once with a message naming the first.

>>> # with BundleWriter(Path("build/pixel8"), force=False) as w:
>>> #     (w.staging / "model.pte").write_bytes(...)
>>> #     w.commit(manifest)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit_runner.files import UnsafeFile, describe_error, link_on_the_way, read_regular, sha256_file, walk
from edgekit_runner.manifest import NAME as MANIFEST
from edgekit_runner.manifest import SCHEMA_VERSION, ManifestError
from edgekit_runner.manifest import validate as validate_manifest
from edgekit_runner.manifest import read_manifest as _read_manifest

from edgekit import signals
from edgekit.errors import BundleError
from edgekit.fsutil import pid_alive, remove_if_owner_dead

__all__ = ["MANIFEST", "SCHEMA_VERSION", "BundleWriter", "check_destination", "file_hashes", "read_manifest",
           "sha256_file", "verify"]


def check_destination(out: Path, force: bool, locked: bool = False) -> None:
    """Fail before any work if ``out`` cannot be written: it exists (without ``force``), or it is not a
    bundle that edgekit wrote and that is intact (even with ``force``)."""
    out = Path(out)
    for folder in Path(os.path.abspath(out)).parents:
        if (folder / MANIFEST).is_file():
            try:
                read_manifest(folder)
            except BundleError:
                continue  # another tool's manifest.json: not our concern here
            raise BundleError(f"{out} is inside the bundle {folder}; a bundle holds only the files its manifest "
                              "lists: choose an --out outside it")
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise BundleError(f"{out} already exists; pass --force to replace it "
                          "(the old bundle is kept until the new one is complete)")
    if out.is_symlink() or not out.is_dir():
        raise BundleError(f"{out} is {'a symbolic link' if out.is_symlink() else 'not a folder'}; refusing to "
                          "replace it even with --force; choose another --out")
    holder = None if locked else _lock_holder(out)
    if holder:
        raise BundleError(f"another edgekit build (pid {holder}) is writing {out}; wait for it to finish or choose "
                          "another --out")
    try:
        _, problems = verify(out)
    except BundleError as e:
        problems = [str(e)]
    if problems:
        raise BundleError(f"{out} is not an edgekit bundle that can be replaced ({problems[0]}"
                          f"{f'; and {len(problems) - 1} more' if len(problems) > 1 else ''}); refusing to "
                          "replace it even with --force: remove it yourself or choose another --out")


class BundleWriter:
    def __init__(self, out: Path, force: bool = False):
        self.out = Path(out).absolute()
        self.force = force
        check_destination(self.out, force)  # early, before any work; again under the lock in __enter__
        self._checked: tuple[int, int] | None = None
        self.staging: Path | None = None
        self._lock: tuple[Path, int] | None = None

    def __enter__(self) -> BundleWriter:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BundleError(f"cannot create {self.out.parent} for the bundle: {e.strerror or e}; "
                              "choose another --out") from None
        self._lock = _lock(self.out)
        try:
            _remove_stale_partials(self.out)
            check_destination(self.out, self.force, locked=True)  # no other build can change it from here on
            self._checked = _identity(self.out)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-{os.getpid()}-",
                                                 dir=self.out.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.staging, 0o777 & ~umask)  # mkdtemp makes it 0700; a bundle is an ordinary folder
        except BaseException:
            self.__exit__(None)
            raise
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            _unlock(self._lock)
            self._lock = None

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every staged file into the manifest, write it last, and swap the folder in."""
        assert self.staging is not None
        manifest = dict(manifest, files=file_hashes(self.staging))
        try:  # a build never writes a manifest its own readers would refuse
            validate_manifest(json.loads(json.dumps(manifest, default=str)), "the new manifest")
        except ManifestError as e:
            raise BundleError(f"internal error, the bundle was not written: {e}") from None
        tmp = self.staging / f".{MANIFEST}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True, default=str, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.staging / MANIFEST)
        _fsync_dir(self.staging)
        if _identity(self.out) != self._checked:  # another folder appeared there meanwhile: check it again
            check_destination(self.out, self.force)
        with signals.critical():  # an interrupt from here on waits until the swap is done
            try:
                self._swap()
            except OSError as e:
                raise BundleError(f"cannot put the bundle in place at {self.out}: {describe_error(e)}") from None
        return self.out

    def _swap(self) -> None:
        """Staging -> ``out`` in one step; then the old bundle (if any) is removed."""
        assert self.staging is not None
        if self.out.exists():
            if not _exchange(self.staging, self.out):  # no atomic swap here: a moment without a bundle
                old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
                os.replace(self.out, old)
                os.replace(self.staging, self.out)
                self.staging = old
        else:
            os.replace(self.staging, self.out)
            self.staging = None
        _fsync_dir(self.out.parent)
        if self.staging is not None:  # now the old bundle
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def file_hashes(root: Path) -> dict[str, dict[str, Any]]:
    """Every regular file under ``root`` but the manifest -> sha256 and size."""
    return {rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
            for rel, kind in walk(root) if kind == "file" and rel != MANIFEST and not rel.startswith(f".{MANIFEST}")}


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The manifest of ``bundle``, checked against the bundle schema (BundleError, one line, if it does not fit)."""
    try:
        return _read_manifest(Path(bundle)).data
    except ManifestError as e:
        raise BundleError(str(e)) from None


def verify(bundle: Path) -> tuple[dict[str, Any], list[str]]:
    """The manifest and a list of problems (missing, changed or unlisted files, links, FIFOs, empty folders,
    a model or eval file the manifest does not list); empty when intact. A bundle replaced while it is being
    read (``edgekit build --force`` elsewhere) is read again, so the answer is about one bundle."""
    bundle = Path(bundle)
    for _ in range(5):
        before = _identity(bundle)
        manifest = read_manifest(bundle)
        problems = _problems(bundle, manifest)
        if not problems or _identity(bundle) == before:
            return manifest, problems
        time.sleep(0.05)
    return manifest, problems


def _problems(bundle: Path, manifest: dict[str, Any]) -> list[str]:
    listed = manifest["files"]
    problems = [f"{manifest[section]['file']}: the manifest's {section} file is not in its files list"
                for section in ("model", "eval") if manifest[section]["file"] not in listed]
    try:
        entries = dict(walk(bundle))  # links are never followed: a listed file must be there itself
    except OSError as e:
        return [*problems, f"cannot list the bundle folder: {describe_error(e)}"]
    for rel, meta in sorted(listed.items()):
        kind = entries.get(rel)
        if kind is None:
            link = link_on_the_way(bundle, rel)
            problems.append(f"{rel}: reached through the symbolic link {link}" if link else f"{rel}: missing")
        elif kind != "file":
            problems.append(f"{rel}: {kind}, not a regular file")
        else:
            try:
                if sha256_file(bundle / rel) != meta["sha256"]:
                    problems.append(f"{rel}: sha256 mismatch (file was modified)")
            except (UnsafeFile, OSError) as e:
                problems.append(f"{rel}: {describe_error(e)}")
    folders = {rel.rsplit("/", 1)[0] for rel in listed if "/" in rel}  # an emptied one: its files are missing
    for rel, kind in entries.items():
        if rel in listed or rel == MANIFEST:
            continue
        if kind == "file":
            problems.append(f"{rel}: not listed in the manifest")
        elif kind != "empty-dir":
            problems.append(f"{rel}: {kind} the manifest does not list")
        elif rel not in folders:
            problems.append(f"{rel}: an empty folder the manifest does not list")
    return problems


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _lock(out: Path) -> tuple[Path, int]:
    """An exclusive lock on ``.NAME.lock`` beside ``out`` for one build; BundleError at once if another build
    holds it, or if that name is taken by something edgekit did not write. The file holds the build's pid
    and is removed when the build ends (:func:`_unlock`); a lock taken on a file that was removed meanwhile
    is dropped and taken again on the new one."""
    import fcntl

    path = out.parent / f".{out.name}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise BundleError(f"cannot create the lock file {path}: {e.strerror or e}; choose another --out") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BundleError(f"{path} is not a lock file edgekit wrote (not a regular file); remove it")
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            if holder and not holder.isdigit():
                raise BundleError(f"{path} is not a lock file edgekit wrote (it holds other text); remove it or "
                                  "choose another --out")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise BundleError(f"another edgekit build{f' (pid {holder})' if holder else ''} is writing {out}; "
                                      "wait for it to finish or choose another --out") from None
                raise BundleError(f"cannot lock {path}: {e.strerror or e}") from None
        except BaseException:
            os.close(fd)
            raise
        if _identity(path) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            break
        os.close(fd)  # the holder removed the file between our open and our lock: try the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    return path, fd


def _lock_holder(out: Path) -> str | None:
    """The pid of a live build holding ``out``'s lock, or None."""
    try:
        holder = read_regular(out.parent / f".{out.name}.lock", 64).decode("ascii", "replace").strip()
    except (OSError, UnsafeFile):
        return None
    return holder if holder.isdigit() and int(holder) != os.getpid() and pid_alive(int(holder)) else None


def _unlock(lock: tuple[Path, int]) -> None:
    path, fd = lock
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # while still holding it: a build waiting on this file sees it is gone and retries
    os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS sys/stdio.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the OS or file system cannot (then nothing changed)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
            rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
            rc = libc.renamex_np(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
        else:
            return False
    except OSError:  # no C library to load
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))  # commit() turns it into a BundleError


def _remove_stale_partials(out: Path) -> None:
    """Remove the staging folders of builds whose process is gone. A dead build's ``.NAME.old-PID`` (the
    previous bundle, moved aside by the two-step swap where the exchange is not available) is put back
    when ``out`` is missing, since it is then the only copy; otherwise it is removed."""
    staging, old = f".{out.name}.partial-", f".{out.name}.old-"
    if not (out.exists() or out.is_symlink()):
        for p in out.parent.glob(f"{old}*"):
            pid = p.name[len(old):]
            if pid.isdigit() and not pid_alive(int(pid)):
                os.replace(p, out)
                break
    remove_if_owner_dead([*out.parent.glob(f"{staging}*"), *out.parent.glob(f"{old}*")],
                         lambda name: name[len(staging if name.startswith(staging) else old):].split("-")[0])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Reading a bundle's files safely. Stdlib + numpy: this runs on the device.

A bundle is untrusted data. Every file is opened without following a symlink and without blocking
(a FIFO would hang a plain ``open``), and used only if it is a regular file; a bundle folder is walked
without following links, so a link, a device node, a FIFO or an empty folder is seen for what it is;
the eval set's arrays are checked against the shapes the manifest declares *before* they are
decompressed, so a small file cannot make the runner allocate gigabytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MAX_EVAL_BYTES = 1 << 30  # decompressed eval arrays, all together


class UnsafeFile(Exception):
    """A path that is not a regular file, or a file that is larger than allowed; the message is one line."""


def open_regular(path: Path, follow_links: bool = False) -> IO[bytes]:
    """Open ``path`` for reading if it is a regular file (not a FIFO, device or folder; not a symbolic link
    either, unless ``follow_links``: for trusted config files that a user may keep as links)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if getattr(os, "O_NOFOLLOW", 0) and os.path.islink(path):
            raise UnsafeFile(f"{path} is a symbolic link, not a file") from None
        raise e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFile(f"{path} is {describe_mode(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int, follow_links: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    with open_regular(path, follow_links) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise UnsafeFile(f"{path} is {size} bytes (limit {limit})")
        return f.read(limit + 1)[:limit]


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file (UnsafeFile for anything else, OSError if it cannot be read)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def link_on_the_way(root: Path, rel: str) -> str | None:
    """The first component of ``root/rel`` below ``root`` that is a symbolic link (``rel`` itself included), or
    None. A bundle's files are reached without links: a link could lead outside the bundle, or in a loop."""
    path = Path(root)
    for part in rel.split("/"):
        path = path / part
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return str(path.relative_to(root))
        except OSError:
            return None  # missing: the caller's open says so
    return None


def describe_error(e: BaseException) -> str:
    """An OSError as its short reason ("No such file or directory"), anything else as its message."""
    return (e.strerror or str(e)) if isinstance(e, OSError) else str(e)


def describe_mode(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def walk(root: Path) -> Iterator[tuple[str, str]]:
    """Every entry under ``root`` as (relative POSIX path, kind), links never followed. Kinds: ``file``
    (regular), ``empty-dir`` (a folder with nothing in it), or what else it is (a symbolic link, a FIFO, ...).
    Folders that hold something are not listed themselves; ``__pycache__`` folders and macOS Finder's
    ``.DS_Store`` files are skipped (Python and the Finder write them where they run)."""
    stack = [(Path(root), "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        if not entries and prefix:
            yield prefix.rstrip("/"), "empty-dir"
        for entry in entries:
            if entry.name == ".DS_Store":
                continue
            rel = prefix + entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                if entry.name != "__pycache__":
                    stack.append((Path(entry.path), rel + "/"))
            elif stat.S_ISREG(mode):
                yield rel, "file"
            else:
                yield rel, describe_mode(mode)


def load_npz(path: Path, expected: dict[str, tuple[int, ...]] | None = None,
             max_bytes: int = MAX_EVAL_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read without pickles, after checking each array's header: its shape
    must be the one in ``expected`` (every array must be declared there, when given), object arrays are
    refused, and the arrays together may not exceed ``max_bytes`` decompressed. Raises UnsafeFile (one line)."""
    import numpy as np

    arrays: dict[str, np.ndarray] = {}
    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as z:
            headers = {info.filename: _npy_header(z, info) for info in z.infolist()}
            total = 0
            for member, (shape, dtype) in headers.items():
                name = member[:-4] if member.endswith(".npy") else member
                if expected is not None and expected.get(name) != shape:
                    declared = "is not declared" if name not in expected else f"is declared {list(expected[name])}"
                    raise UnsafeFile(f"{path}: array {name!r} has shape {list(shape)} but {declared} in the manifest")
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if total > max_bytes:
                    raise UnsafeFile(f"{path}: the arrays need over {max_bytes >> 20} MiB when loaded")
            for member in headers:
                with z.open(member) as m:
                    arrays[member[:-4] if member.endswith(".npy") else member] = np.lib.format.read_array(
                        m, allow_pickle=False)
    except UnsafeFile:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
        raise UnsafeFile(f"{path} is not a readable .npz file: {type(e).__name__}: {str(e).splitlines()[0][:200]}") \
            from None
    except Exception as e:  # zlib.error, struct.error, ... from a damaged archive
        raise UnsafeFile(f"{path} is damaged: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if expected is not None and (missing := sorted(set(expected) - set(arrays))):
        others = f"; nor {', '.join(missing[1:])}" if len(missing) > 1 else ""
        raise UnsafeFile(f"{path} has no {missing[0]} array (declared in the manifest{others})")
    return arrays


def _npy_header(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from one member's .npy header, without reading its data."""
    import numpy as np

    with z.open(info) as m:
        version = np.lib.format.read_magic(m)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:
            shape, _, dtype = read(m, max_header_size=10_000)
        except TypeError:  # numpy < 1.24 has no max_header_size (and no limit)
            shape, _, dtype = read(m)
    if dtype.hasobject:
        raise UnsafeFile(f"{info.filename} holds Python objects (a pickle); refused")
    if any(d < 0 for d in shape):
        raise UnsafeFile(f"{info.filename} has a negative dimension")
    return tuple(int(d) for d in shape), dtype


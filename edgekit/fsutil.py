"""Files on the host: atomic writes for everything edgekit keeps (a reader sees the old file or the
complete new one, never a partial write, and a failed write leaves no temporary file behind), bounded
reads of the small config files a user hands over, and the removal of what dead builds left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgekit_runner.files import UnsafeFile, describe_error, read_regular

MAX_CONFIG_BYTES = 1 << 20


CACHE_ENV = "EDGEKIT_CACHE"


def cache_dir() -> Path:
    """Where downloaded and converted models are kept: ``$EDGEKIT_CACHE``, default ``~/.cache/edgekit``."""
    return Path(os.environ.get(CACHE_ENV, "").strip() or Path.home() / ".cache" / "edgekit").expanduser()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, flush it to disk, then rename it into
    place with the umask's ordinary file mode (mkstemp makes it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_if_owner_dead(paths: Iterable[Path], pid_of: Callable[[str], str]) -> None:
    """Remove the files and folders among ``paths`` that belong to a process that is gone: ``pid_of(name)``
    gives the pid written in the name. Only this user's entries are touched; anything unparsable is left."""
    for p in paths:
        try:
            pid = int(pid_of(p.name))
            if pid <= 0 or pid == os.getpid() or pid_alive(pid) or p.lstat().st_uid != os.getuid():
                continue
        except (ValueError, IndexError, OSError):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def read_toml(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A small TOML file (a project or a device profile), read as untrusted data: a regular file of at most
    :data:`MAX_CONFIG_BYTES`, UTF-8, valid TOML; anything else raises ``error`` with one line naming the file."""
    try:
        text = read_regular(path, MAX_CONFIG_BYTES, follow_links=True).decode("utf-8")  # trusted: links are fine
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    except (UnsafeFile, OSError) as e:
        raise error(f"{path}: cannot read: {describe_error(e)}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML: {e}") from None
    except (RecursionError, ValueError) as e:  # nesting too deep; an integer of thousands of digits
        raise error(f"{path}: not usable TOML: {str(e)[:200] or type(e).__name__}") from None

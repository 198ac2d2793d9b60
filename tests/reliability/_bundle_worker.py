"""A separate process that reads or writes one bundle folder in a loop (for the concurrency tests).

    python _bundle_worker.py write OUT N      N bundles written to OUT with --force semantics
    python _bundle_worker.py read OUT STOPFILE  verify OUT until STOPFILE exists

Prints one JSON line: what it did and every exception or problem it met (type and message).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from edgekit.bundle import BundleWriter, verify
from edgekit.errors import BundleError
from tests.manifests import manifest

MANIFEST = manifest(model__file="model.bin")


def write(out: Path, n: int) -> dict:
    done, refused, errors = 0, 0, []
    for i in range(n):
        try:
            with BundleWriter(out, force=True) as w:
                # files of different sizes each time, so a reader that mixes two bundles sees a mismatch
                (w.staging / "model.bin").write_bytes(os.urandom(1000 + 97 * i))
                (w.staging / "eval.npz").write_bytes(os.urandom(500 + 13 * i))
                w.commit(MANIFEST)
            done += 1
        except BundleError as e:
            if "another edgekit build" not in str(e):
                errors.append(f"BundleError: {e}")
            refused += 1
        except Exception as e:  # what the issue saw: raw FileNotFoundError, "Directory not empty"
            errors.append(f"{type(e).__name__}: {e}")
    return {"written": done, "refused": refused, "errors": errors}


def read(out: Path, stop: Path) -> dict:
    reads, errors = 0, []
    while not stop.exists():
        try:
            _, problems = verify(out)
            if problems:
                errors.append(f"problems: {problems}")
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        reads += 1
    return {"reads": reads, "errors": errors}


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    result = write(out, int(sys.argv[3])) if mode == "write" else read(out, Path(sys.argv[3]))
    print(json.dumps(result))

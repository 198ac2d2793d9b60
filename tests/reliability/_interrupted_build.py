"""``edgekit build`` in a child process, with the ONNX exporter made to meet a signal mid-export.

    python _interrupted_build.py gc OUT        SIGINT delivered inside a garbage-collector callback (where
                                               Python swallows the KeyboardInterrupt, as in JAX's callbacks)
    python _interrupted_build.py wait OUT MARK  touch MARK, then sleep in the export until a signal arrives

The exit status and stderr are edgekit's own.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from pathlib import Path

from edgekit.cli import main
from edgekit.export import EXPORTERS

ROOT = Path(__file__).resolve().parents[2]
exporter = EXPORTERS["onnx"]
original = exporter.export
mode, out = sys.argv[1], sys.argv[2]
marker = Path(sys.argv[3]) if mode == "wait" else None


def interrupt_inside_a_gc_callback() -> None:
    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            gc.callbacks.remove(callback)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the signal handler runs here, inside the callback
                pass

    gc.callbacks.append(callback)
    gc.collect()


def export(*args, **kwargs):
    if mode == "gc":
        interrupt_inside_a_gc_callback()
    else:
        marker.touch()
        time.sleep(60)
    return original(*args, **kwargs)


exporter.export = export
sys.argv = ["edgekit", "build", "-d", "jetson-orin-nano", "--project", str(ROOT), "--quant", "none", "--no-distill",
            "--out", out]
main()

"""Small helpers shared by the transport tests."""

from __future__ import annotations

from pathlib import Path

FAST = ("--min-seconds", "0.05", "--warmup-seconds", "0")  # runner flags that keep each run short


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"

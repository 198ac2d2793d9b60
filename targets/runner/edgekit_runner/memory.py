"""Resident memory of this process, from ``/proc/self/status`` (Linux, Android).

The peak (``VmHWM``) is process-wide and only ever grows, so before each phase the runner
resets it by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0); the peak read after
the phase is then that phase's own. Where ``/proc`` is missing (macOS, Windows) or a read or
reset fails, the value is ``None`` and ``unavailable`` says why -- never a made-up 0.

>>> probe = MemoryProbe(); probe.rss("baseline_rss_mb"); probe.reset_peak()  # doctest: +SKIP
>>> load_model(); probe.peak("peak_rss_load_mb"); probe.result()  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


class MemoryProbe:
    """Collects named readings (RSS in MB, file sizes in bytes) and the reasons for the ones it could not take."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        self._reset_error: str | None = "the peak was never reset"

    def rss(self, name: str) -> None:
        """Record the current resident set size (``VmRSS``) as ``name``."""
        self._record(name, "VmRSS")

    def peak(self, name: str) -> None:
        """Record the peak resident set size (``VmHWM``) since the last :meth:`reset_peak` as ``name``."""
        if self._reset_error is not None:
            self._set(name, None, f"the peak could not be isolated to this phase: {self._reset_error}")
        else:
            self._record(name, "VmHWM")

    def reset_peak(self) -> None:
        """Reset ``VmHWM`` to the current RSS; later peaks are unavailable if this fails."""
        try:
            PROC_CLEAR_REFS.write_text("5")
            self._reset_error = None
        except OSError as e:
            self._reset_error = f"cannot write {PROC_CLEAR_REFS}: {e.strerror or e}"

    def file_size(self, name: str, path: Path) -> None:
        """Record the size of ``path`` in bytes as ``name``."""
        try:
            self._set(name, path.stat().st_size, None)
        except OSError as e:
            self._set(name, None, f"cannot stat {path}: {e.strerror or e}")

    def result(self) -> dict[str, Any]:
        return {**self.values, "unavailable": dict(self.unavailable)}

    def _record(self, name: str, key: str) -> None:
        try:
            text = PROC_STATUS.read_text()
        except OSError as e:
            self._set(name, None, f"cannot read {PROC_STATUS}: {e.strerror or e}")
            return
        for line in text.splitlines():
            if line.startswith(key + ":"):
                kb = int(line.split()[1])  # "VmRSS:    123456 kB"
                if kb > 0:
                    self._set(name, kb / 1024, None)
                else:
                    self._set(name, None, f"{key} reads 0 kB")
                return
        self._set(name, None, f"{PROC_STATUS} has no {key} line")

    def _set(self, name: str, value: float | None, reason: str | None) -> None:
        self.values[name] = value
        if reason:
            self.unavailable[name] = reason
        else:
            self.unavailable.pop(name, None)


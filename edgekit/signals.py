"""Interrupts that stop a build wherever they arrive: SIGINT (Ctrl-C), SIGTERM and SIGHUP.

Python turns SIGINT into a ``KeyboardInterrupt`` raised in whatever Python code runs at that moment. If
that code is a garbage-collector callback or a ``__del__`` (JAX, pulled in by litert-torch, runs such
callbacks during export), Python prints "Exception ignored" and carries on: the build would finish and
write its bundle. SIGTERM and SIGHUP kill the process outright, leaving temporary folders behind.

So while :func:`handle_signals` is active, all three are handled here: the handler *records* the signal
and raises :class:`Interrupted`; code that must not go on after an interrupt calls :func:`checkpoint`,
which raises it again if the first one was swallowed. The pipeline calls it at every stage and
progress step, and :class:`edgekit.bundle.BundleWriter` right before it swaps a bundle in. Inside
:func:`critical` a signal is only recorded, and raised when the critical section ends, so that a
bundle swap is never cut in half.

>>> with handle_signals():        # doctest: +SKIP
...     for epoch in range(100):
...         checkpoint()              # raises Interrupted(SIGINT) after a Ctrl-C, even a swallowed one
...         train_one_epoch()
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

HANDLED = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)

_received: int | None = None
_critical = 0


class Interrupted(KeyboardInterrupt):
    """A handled signal arrived. ``exit_code`` is the shell's convention, 128 + the signal number."""

    def __init__(self, signum: int, completed: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.completed = completed  # True: it arrived during a critical section, which was allowed to finish

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _handler(signum: int, _frame: Any) -> None:
    global _received
    if _received is None:
        _received = signum
    if _critical == 0:
        raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Handle SIGINT, SIGTERM and SIGHUP as :class:`Interrupted` for the block (main thread only; elsewhere
    Python cannot install handlers and this does nothing). The previous handlers are restored after."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    _received = None
    for s in HANDLED:
        signal.signal(s, _handler)
    try:
        yield
        checkpoint()  # a signal swallowed in the last moments still counts
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received = None


def checkpoint() -> None:
    """Raise :class:`Interrupted` if a handled signal arrived (even one whose exception was swallowed)."""
    if _received is not None:
        raise Interrupted(_received)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section that a signal must not cut in half: a signal arriving inside is raised when it ends,
    as ``Interrupted(completed=True)``."""
    global _critical
    checkpoint()
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
    if _received is not None:
        raise Interrupted(_received, completed=True)

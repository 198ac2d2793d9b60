"""Interrupts that stop a build wherever they arrive: SIGINT (Ctrl-C), SIGTERM and SIGHUP.

Python turns SIGINT into a ``KeyboardInterrupt`` raised in whatever Python code runs at that moment. If
that code is a garbage-collector callback or a ``__del__`` (JAX, pulled in by litert-torch, runs such
callbacks during export), Python prints "Exception ignored" and carries on: the build would finish and
write its bundle. SIGTERM and SIGHUP kill the process outright, leaving temporary folders behind.

So while :func:`handle_signals` is active (the ``edgekit`` command wraps every subcommand in it), all
three are handled here: the handler *records* the signal and raises :class:`Interrupted`; code that must
not go on after an interrupt calls :func:`checkpoint`, which raises it again if the first one was
swallowed. The pipeline calls it at every stage and progress step, and
:class:`edgekit.bundle.BundleWriter` right before it swaps a bundle in. A command that treats an
interrupt as its normal way to stop (``edgekit serve``) calls :func:`clear` once it has. A signal the
parent process told edgekit to ignore (``nohup``, a shell's background job) stays ignored.

Inside :func:`critical` a signal is only recorded, and raised when the section ends, so that a bundle
swap is never cut in half; without :func:`handle_signals` (edgekit used as a library) the section
blocks the signals instead, and they arrive when it ends.

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

_active = False  # handle_signals() has installed the handlers
_received: int | None = None  # the first handled signal since then (cleared by clear())
_critical = 0  # depth of critical() / shielded() sections


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
    """Handle SIGINT, SIGTERM and SIGHUP as :class:`Interrupted` for the block, except those the process
    ignores (inherited SIG_IGN). Main thread only; elsewhere Python cannot install handlers and this does
    nothing. The previous handlers are restored after. If a signal's exception was swallowed and nothing
    called :func:`checkpoint` since, it is raised when the block ends."""
    global _active, _received
    if threading.current_thread() is not threading.main_thread() or _active:
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    _received, _active = None, True
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, _handler)
    try:
        yield
        checkpoint()
    finally:
        for s, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _received, _active = None, False


def checkpoint() -> None:
    """Raise :class:`Interrupted` if a handled signal arrived (even one whose exception was swallowed)."""
    if _received is not None:
        raise Interrupted(_received)


def clear() -> None:
    """Forget a handled signal: the caller has acted on it (stopped cleanly), so it is no error."""
    global _received
    _received = None


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section that a signal must not cut in half: a signal arriving inside is raised when it ends,
    as ``Interrupted(completed=True)`` (the section's work is done)."""
    global _critical
    checkpoint()
    if not _active:
        with _blocked():
            yield
        return
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
    if _received is not None:
        raise Interrupted(_received, completed=True)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Like :func:`critical`, but for clean-up code that runs while an exception is already on its way: a
    signal arriving inside is recorded (and :func:`checkpoint` sees it), never raised from here."""
    global _critical
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1


@contextlib.contextmanager
def _blocked() -> Iterator[None]:
    """The handled signals blocked at the OS level for the block (where the platform can)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

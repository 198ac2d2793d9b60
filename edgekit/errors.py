"""One error type per kind of failure.

Each carries a message that says what was wrong, where, and what to do, and an
exit code the CLI returns. The CLI prints ``error: <message>`` on one line and
never a traceback for these (unless ``--debug``).
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1


class ProfileError(EdgekitError):
    """A device profile is unknown, unreadable or invalid."""

    exit_code = 2


class ProjectError(EdgekitError):
    """The project spec (edgekit.toml) or what it points at is wrong."""

    exit_code = 2


class UnsafeFileError(EdgekitError):
    """A data file (weights) would run code if loaded (a pickle with code in it); refused. Entry points in
    edgekit.toml are trusted code and are imported as they are (see edgekit.project)."""

    exit_code = 2


class PlanError(EdgekitError):
    """The requested format/backend/precision cannot be built for this device."""

    exit_code = 3


class ExportError(EdgekitError):
    """torch.export or a backend's lowering refused the model."""

    exit_code = 4


class ValidationFailed(EdgekitError):
    """An exported artifact disagrees with the PyTorch reference beyond tolerance."""

    exit_code = 5


class BundleError(EdgekitError):
    """A bundle cannot be written, or a written one is incomplete or tampered with."""

    exit_code = 6

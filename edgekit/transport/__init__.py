"""Transports: run a bundle on a device (local, ssh, adb) and bring the runner's report back.

>>> from edgekit.transport import run_bundle
>>> outcome = run_bundle(Path("build/pixel8"), "adb:emulator-5554", runs=100, timeout=300)  # doctest: +SKIP
>>> outcome.status, outcome.attempts  # doctest: +SKIP
('OK', 1)

:mod:`~edgekit.transport.base` holds the contract (targets, errors, outcome);
:mod:`~edgekit.transport.bench` the orchestration; one module per transport.
"""

from edgekit.transport.base import INFRA_ERROR, MODEL_ERROR, OK, InfraError, RunOutcome, Target, parse_target
from edgekit.transport.bench import run_bundle

__all__ = ["INFRA_ERROR", "MODEL_ERROR", "OK", "InfraError", "RunOutcome", "Target", "parse_target", "run_bundle"]

"""The run report: what the runner measured, where, with what. Stdlib only.

The runner records; the host interprets (budgets, comparisons). Every report
carries ``schema_version``; the host refuses versions it does not know.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
import uuid
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

OK = "OK"
MODEL_ERROR = "MODEL_ERROR"  # the runtime refused or failed to run the model
INFRA_ERROR = "INFRA_ERROR"  # the bundle or device could not be used at all


@dataclass
class RunReport:
    status: str
    bundle: dict[str, Any]
    runtime: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    device: dict[str, Any] = field(default_factory=lambda: {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "node": platform.node(),
    })
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunReport":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"report schema_version {version!r} is not supported (supported: {SCHEMA_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

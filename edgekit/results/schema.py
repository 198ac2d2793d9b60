"""The host's pydantic model of the runner's JSON report, and the one function that parses it.

The runner (``edgekit_runner.report``, whose ``FIELDS`` documents every field) writes the
report with the stdlib only; the host validates it here before anything is stored.
Top-level fields are typed; the nested sections (``bundle``, ``runtime``, ``metrics``,
``latency_ms``, ``device``, ``memory``, ``timing``) are open: unknown keys are kept, so a
runner may add facts without a host release. ``schema_version`` must be one the host
knows (:data:`SUPPORTED_VERSIONS`); any other is refused with a message that says to upgrade.

>>> report = parse_report(b'{"schema_version": 1, "run_id": "9f1c...", ...}')  # doctest: +SKIP
>>> report.status, report.latency_ms.get("median")  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from edgekit_runner import safejson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from edgekit.results import ResultsError

SUPPORTED_VERSIONS = (1, 2)
RUN_ID_PATTERN = r"^[0-9a-f]{16,64}$"  # uuid4().hex is 32; hex only, so it is safe in file names


class ReportInvalid(ResultsError):
    """A report is not JSON, or not a report of a schema version this host knows (the collector answers 400)."""


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # a board without a clock (no RTC, no NTP) reports 1970
MAX_AHEAD = timedelta(days=1)


def _aware_iso_time(value: str) -> str:
    """An ISO 8601 time with a time zone, from 1970 to a day ahead of this host's clock: a run dated in the
    future would stay first in every listing (runs are listed newest first)."""
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("no time zone")
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("must be an ISO 8601 time with a time zone, e.g. 2026-01-31T12:00:00+00:00") from None
    if not EARLIEST <= when <= datetime.now(UTC) + MAX_AHEAD:
        raise ValueError(f"{when.isoformat(timespec='seconds')} is not a plausible time for a run (expected "
                         f"from {EARLIEST.year} to a day ahead of this host's clock); set the device's clock")
    return value


class BundleInfo(BaseModel):
    """Which bundle ran. An INFRA_ERROR report may carry only ``path``."""

    model_config = ConfigDict(extra="allow")

    path: str
    profile: str | None = None
    format: str | None = None
    backend: str | None = None
    precision: str | None = None
    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class RunReport(BaseModel):
    """One run of a bundle on a device, as the runner reported it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: Literal[1, 2]
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    created_at: Annotated[str, AfterValidator(_aware_iso_time)]  # kept as sent; the store normalizes to UTC
    status: Literal["OK", "MODEL_ERROR", "INFRA_ERROR"]
    bundle: BundleInfo
    runtime: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    latency_ms: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    device: dict[str, Any] = Field(default_factory=dict)
    memory: dict[str, Any] = Field(default_factory=dict)  # from schema 2
    timing: dict[str, Any] = Field(default_factory=dict)  # from schema 2
    fallback: str | None = None  # from schema 2: what ran instead of the bundle's delegate / provider, and why

    @property
    def created_at_utc(self) -> str:
        """``created_at`` in UTC, ISO 8601, so that stored times sort as strings."""
        return datetime.fromisoformat(self.created_at).astimezone(UTC).isoformat(timespec="seconds")


def parse_report(data: bytes | str | dict[str, Any]) -> RunReport:
    """Validate a report (raw JSON or an already decoded dict); raise ReportInvalid saying what is wrong."""
    try:
        if isinstance(data, dict):
            safejson.check(data, "report")
        else:
            data = safejson.loads(data, "report")
    except safejson.JsonError as e:
        raise ReportInvalid(str(e)) from None
    if not isinstance(data, dict):
        raise ReportInvalid(f"report must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ReportInvalid(f"report schema_version {version!r} is not supported by this edgekit "
                           f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))}); "
                           "upgrade edgekit on the host or run a matching edgekit_runner")
    try:
        return RunReport.model_validate(data)
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc'])) or 'report'}: {err['msg']}" for err in e.errors()]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ReportInvalid(f"report does not match schema {version}: {'; '.join(problems[:3])}{more}") from None

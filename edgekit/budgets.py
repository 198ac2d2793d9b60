"""A device's budgets, checked against measured numbers: by every build (on this host) and every bench (where
the bundle ran).

Each profile's ``[budgets]`` gives the limits; ``--budget KEY=VALUE`` overrides one for a run. A budget is
checked only against a number that was measured, and says where it was measured: the build measures the
artifact's size, a quantized classifier's accuracy drop against the PyTorch fp32 reference and the latency *on
this host* in the device's runtime (a proxy for the device, said so; not when it validated on a host twin,
whose speed says nothing of the device's path), and not peak memory (``edgekit bench`` measures that in a fresh
process, which the build's own process, holding torch and the exporters, cannot). A budget with no
measurement is reported as ``not measured``, never as passed.

A missed budget is not a broken artifact: the build still writes its bundle (with the checks in its
manifest's ``budgets``) and bench still stores its report; the command then exits with :data:`EXIT_CODE`
unless ``--no-fail-on-budget``.

>>> limits = resolve(load_profile("pixel8"), {"latency_p90_ms": "0.001"})  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from edgekit.errors import EdgekitError

EXIT_CODE = 10


class BudgetMissed(EdgekitError):
    """A measured number is over (or under) a device budget; the bundle or report was still written."""

    exit_code = EXIT_CODE


@dataclass(frozen=True)
class Key:
    field: str  # the profile's [budgets] field
    label: str
    unit: str
    upper: bool  # True: the measured value must be <= the limit; False: >=
    tasks: tuple[str, ...]  # the tasks it applies to


_ALL = ("classification", "embedding", "language-model")
KEYS: dict[str, Key] = {
    "model_mb": Key("max_model_mb", "model size", "MB", True, _ALL),
    "peak_memory_mb": Key("max_peak_memory_mb", "peak memory", "MB", True, _ALL),
    "latency_p90_ms": Key("p90_latency_ms", "p90 latency", "ms", True, ("classification", "embedding")),
    "accuracy_drop": Key("max_accuracy_drop", "accuracy drop vs fp32", "points", True, ("classification",)),
    "decode_tokens_per_s": Key("min_decode_tokens_per_s", "decode speed", "tokens/s", False, ("language-model",)),
    "time_to_first_token_ms": Key("max_time_to_first_token_ms", "time to first token", "ms", True,
                                  ("language-model",)),
}


@dataclass(frozen=True)
class Check:
    key: str
    label: str
    limit: float
    unit: str
    upper: bool
    measured: float | None
    where: str | None  # "artifact", "this host (x86_64, ...)", "local", "ssh://pi@...": where the number came from
    status: str  # "pass" | "fail" | "not measured"

    @property
    def excess(self) -> float | None:
        """How far past the limit, in its unit (positive when failed)."""
        if self.measured is None:
            return None
        return self.measured - self.limit if self.upper else self.limit - self.measured

    def describe(self) -> str:
        op = "<=" if self.upper else ">="
        if self.measured is None:
            return f"{self.key}: not measured{f' ({self.where})' if self.where else ''}; limit {op} {self.limit:g} {self.unit}"
        text = f"{self.key} {self.measured:.4g} {self.unit} {op} {self.limit:g} {self.unit}"
        if self.status == "fail":
            ratio = self.measured / self.limit if self.upper and self.limit else self.limit / max(self.measured, 1e-12)
            text = (f"{self.key} {self.measured:.4g} {self.unit} misses the limit {op} {self.limit:g} {self.unit} by "
                    f"{self.excess:.4g} {self.unit} ({ratio:.3g}x)")
        return f"{text}, measured on {self.where}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "excess": self.excess}


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, float]:
    """``KEY=VALUE`` strings (``--budget``) as numbers; a bad one is a one-line error naming the keys."""
    from edgekit.errors import PlanError

    out: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in KEYS:
            raise PlanError(f"--budget {pair!r}: give KEY=VALUE with KEY one of {', '.join(KEYS)}")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 0 or (number == 0 and KEYS[key].upper and key != "accuracy_drop"):
            raise PlanError(f"--budget {pair!r}: the limit must be a finite number > 0 "
                            f"({KEYS[key].unit}{'; 0 allowed' if key == 'accuracy_drop' else ''})")
        out[key] = number
    return out


def resolve(profile: Any, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """The limits in force: the profile's budgets with ``overrides`` on top (keys of :data:`KEYS`). A budget the
    profile leaves unset (the language-model ones are optional) is absent unless overridden."""
    budgets = profile.budgets
    limits = {k: getattr(budgets, key.field) for k, key in KEYS.items() if getattr(budgets, key.field, None) is not None}
    return {**limits, **(overrides or {})}


def from_manifest(manifest: dict[str, Any], overrides: dict[str, float] | None = None) -> dict[str, float]:
    """The limits a bundle is benched against: its device profile's budgets, as recorded when it was built, with
    ``overrides`` on top."""
    recorded = (manifest.get("profile") or {}).get("budgets") or {}
    limits = {k: float(recorded[key.field]) for k, key in KEYS.items()
              if isinstance(recorded.get(key.field), (int, float))}
    return {**limits, **(overrides or {})}


def check(limits: dict[str, float], measured: dict[str, tuple[float | None, str | None]], task: str) -> list[Check]:
    """Each limit that applies to ``task`` against ``measured[key] = (value, where)``."""
    out = []
    for k, limit in limits.items():
        key = KEYS[k]
        if task not in key.tasks:
            continue
        value, where = measured.get(k, (None, None))
        if value is None or not math.isfinite(value):
            status = "not measured"
            value = None
        else:
            ok = value <= limit + 1e-9 if key.upper else value >= limit - 1e-9
            status = "pass" if ok else "fail"
        out.append(Check(k, key.label, float(limit), key.unit, key.upper, value, where, status))
    return out


def failed(checks: list[Check] | list[dict[str, Any]]) -> list[Any]:
    return [c for c in checks if (c["status"] if isinstance(c, dict) else c.status) == "fail"]


def raise_if_missed(checks: list[Check], what: str, fail: bool = True) -> None:
    """BudgetMissed naming every failed budget and by how much (unless ``fail`` is False)."""
    missed = failed(checks)
    if missed and fail:
        raise BudgetMissed(f"{what} misses {len(missed)} budget{'s' * (len(missed) > 1)}: "
                           + "; ".join(c.describe() for c in missed)
                           + f" (exit code {EXIT_CODE}; --no-fail-on-budget to exit 0)")


def print_checks(con: Any, checks: list[Check], title: str) -> None:
    """On a rich console, one line per budget: pass / FAIL / not measured, the value, the limit, where measured."""
    from rich.markup import escape

    if not checks:
        return
    con.print(f"  {escape(title)}:")
    for c in checks:
        mark = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]"}.get(c.status, "[dim]not measured[/]")
        con.print(f"    {mark} {escape(c.describe())}")


def host_where() -> str:
    import platform

    return f"this host ({platform.machine()}), not the device"


def for_build(limits: dict[str, float], task: str, model_bytes: int, validation: Any, quantized: bool) -> list[Check]:
    """The build's measurements: the artifact's size, its accuracy drop (quantized; fp32 is held to a tolerance
    instead), and its latency on this host."""
    host = host_where()
    lat = validation.host_latency_ms
    if validation.where != "target-runtime":  # a host twin's speed says nothing of the device's path
        host, lat = None, {}
    twin = ("validated on Qualcomm's HTP emulator, whose speed says nothing of the phone: edgekit bench on the "
            "device measures it" if validation.where == "htp-emulator" else
            "validated on a host twin, not the device's runtime: edgekit bench on the device measures it")
    where = {"target-runtime": host_where(), "htp-emulator": f"Qualcomm's HTP emulator ({validation.n_samples} "
             "eval samples)"}.get(validation.where, "a host twin")
    measured: dict[str, tuple[float | None, str | None]] = {
        "model_mb": (model_bytes / 1e6, "the artifact"),
        "peak_memory_mb": (None, "by edgekit bench, not by the build"),
    }
    if task == "language-model":
        median = lat.get("median")
        measured["decode_tokens_per_s"] = (1000.0 / median if median else None, host or twin)
        measured["time_to_first_token_ms"] = (validation.metrics.get("time_to_first_token_ms") if host else None,
                                              host or twin)
    else:
        measured["latency_p90_ms"] = (lat.get("p90"), f"{host}, batch {lat.get('batch', 1)}" if host else twin)
        measured["accuracy_drop"] = (validation.accuracy_drop if quantized else None,
                                     where if quantized else "fp32: held to the export tolerance instead")
    return check(limits, measured, task)


def task_kind(manifest: dict[str, Any]) -> str:
    """A manifest's task kind ({"kind": ...}), or the results store's manifest summary's (a string)."""
    task = manifest.get("task") or (manifest.get("project") or {}).get("task") or "classification"
    return task.get("kind", "classification") if isinstance(task, dict) else task


def for_bench(limits: dict[str, float], manifest: dict[str, Any], report: dict[str, Any], target: str) -> list[Check]:
    """A bench report's measurements, where it ran."""
    from edgekit.results.store import peak_rss_mb

    task = task_kind(manifest)
    lat, met = (report.get(k) or {} for k in ("latency_ms", "metrics"))
    peak = peak_rss_mb(report.get("memory") or {})
    size = (manifest.get("model") or {}).get("bytes")
    if ((report.get("runtime") or {}).get("qnn") or {}).get("where") == "htp-emulator":
        # Qualcomm's HTP emulator computes what the NPU computes, at a speed and memory that are not the phone's
        lat, peak = {}, None
        target = f"{target}: ran on Qualcomm's HTP emulator, whose speed and memory are not the phone's"
    emulation = (report.get("device") or {}).get("emulation") if isinstance(report.get("device"), dict) else None
    speed_where = memory_where = target
    if emulation:
        # QEMU computes what the device's CPU computes, at a speed that is not the device's, in a process that
        # also holds QEMU's translated code (pixel8's int8 .pte: 930 MB peak under QEMU, 364 MB natively)
        lat, met = {}, {k: v for k, v in met.items() if k not in ("decode_tokens_per_s", "time_to_first_token_ms")}
        target = f"{target}, under emulation ({emulation.get('emulator', 'QEMU')}, -cpu {emulation.get('qemu_cpu')})"
        speed_where = f"{target}: emulated timings are not the device's"
        memory_where, peak = f"{target}: the process's memory includes QEMU's own", None
    measured: dict[str, tuple[float | None, str | None]] = {
        "model_mb": (size / 1e6 if size else None, "the artifact"),
        "peak_memory_mb": (peak, memory_where),
    }
    if task == "language-model":
        measured["decode_tokens_per_s"] = (met.get("decode_tokens_per_s"), speed_where)
        measured["time_to_first_token_ms"] = (met.get("time_to_first_token_ms"), speed_where)
    else:
        measured["latency_p90_ms"] = (lat.get("p90"), speed_where)
        v = manifest.get("validation") or {}
        # the reference on the whole eval set (an HTP-emulator validation may have run a part of it)
        metric, reference = v.get("metric"), (v.get("cpu") or v).get("reference_value")
        value = met.get(metric) if metric else None
        quantized = (manifest.get("model") or {}).get("precision", "fp32") != "fp32"
        drop = (reference - value) * 100 if quantized and isinstance(value, (int, float)) and reference is not None \
            else None
        measured["accuracy_drop"] = (drop, target)
    return check(limits, measured, task)

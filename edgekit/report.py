"""``edgekit report``: bundles and their stored runs, before and after, as ``report.md`` and one self-contained
``report.html`` (tables, budget status, per-layer sensitivity, and plots as inline SVG: no network needed).

Rows (:class:`Variant`) come from three places, and each says where its numbers were measured:

- a bundle's manifest: the PyTorch fp32 models of the build (teacher, the ``[model]`` entry, the distilled
  student, from the distill record, on the eval split) and its artifacts (the fp32 export, the quantized
  one), as validated in the target runtime on this host or on a host twin;
- the results store: every run of those bundles (matched by the model's sha256), or every run for a
  device (``--device``), with the runner's latency percentiles, peak memory and task metrics, measured on
  the device that ran it (its host name, architecture and CPU are in the row);
- the budgets: the build's checks from the manifest, and each run's against the bundle's profile.

Plots (matplotlib, SVG): the task metric against latency with the Pareto front marked (language models:
perplexity against decode tokens/s), size per variant, and latency distribution per variant (min, p50,
p90, p99, max: the runner keeps percentiles, not samples).

>>> # write_report(collect([Path("build/pixel8")], store=ResultsStore()), Path("report"))
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.budgets import task_kind
from edgekit.fsutil import write_bytes_atomic

PYTORCH_WHERE = "PyTorch fp32 on this host (eval split)"


@dataclass
class Variant:
    name: str
    source: str  # the bundle folder, or "results store"
    stage: str  # "pytorch" | "build" | "run"
    precision: str | None = None
    size_bytes: int | None = None
    parameters: int | None = None
    metric: str | None = None  # accuracy, perplexity, retrieval_agreement
    value: float | None = None
    agreement: float | None = None  # with the PyTorch reference: top-1 (classifier), greedy tokens (LM)
    latency: dict[str, float] = field(default_factory=dict)  # min/p50/p90/p99/max, ms (per token for LMs)
    tokens_per_s: float | None = None  # language models: decode
    time_to_first_token_ms: float | None = None
    peak_memory_mb: float | None = None
    where: str = ""
    budgets: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    when: str | None = None
    note: str = ""
    pareto: bool = False
    number: int = 0  # its row in the report's table, which the plots' labels use

    @property
    def label(self) -> str:
        return f"{self.number}. {self.name}"

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "perplexity"

    @property
    def speed(self) -> float | None:
        """The x axis of the quality/speed plot: latency p50 in ms, or decode tokens/s for a language model."""
        return self.tokens_per_s if self.metric == "perplexity" else self.latency.get("p50")

    @property
    def budget_status(self) -> str:
        if not self.budgets:
            return ""
        failed = [b["key"] for b in self.budgets if b["status"] == "fail"]
        return "FAIL: " + ", ".join(failed) if failed else "pass"


@dataclass
class History:
    """The stored runs of one bundle's model on one device, oldest first: what changed from run to run."""

    device: str  # the runner's host name, and the profile the bundle was built for
    bundle: str  # the bundle's folder name as the runner reported it, and its model's sha256 prefix
    runs: list[Variant]

    @property
    def trend(self) -> str:
        """First against last run: latency p50 (decode tokens/s for a language model) and the task metric."""
        first, last = self.runs[0], self.runs[-1]
        parts = [f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}"
                 + (f", {first.when} to {last.when}" if len(self.runs) > 1 else f", {first.when}")]
        lm = first.metric == "perplexity"
        a, b = (first.tokens_per_s, last.tokens_per_s) if lm else (first.latency.get("p50"), last.latency.get("p50"))
        if len(self.runs) > 1 and a and b:
            unit = " tokens/s" if lm else " ms p50"
            parts.append(f"{a:.3f} → {b:.3f}{unit} ({b / a - 1:+.1%})")
        if len(self.runs) > 1 and first.value is not None and last.value is not None and first.metric == last.metric:
            f = ".3f" if lm else ".2%"
            parts.append(f"{first.metric} {first.value:{f}} → {last.value:{f}}")
        return "; ".join(parts)


@dataclass
class Report:
    title: str
    variants: list[Variant]
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # per-layer rows of a --quant mixed build
    notes: list[str] = field(default_factory=list)
    history: list[History] = field(default_factory=list)  # stored runs per device and bundle


# ------------------------------------------------------------------ collecting rows


def _latency(stats: dict[str, Any]) -> dict[str, float]:
    out = {k: float(stats[k]) for k in ("min", "p50", "p90", "p99", "max")
           if isinstance(stats.get(k), (int, float)) and math.isfinite(stats[k])}
    if "p50" not in out and isinstance(stats.get("median"), (int, float)):
        out["p50"] = float(stats["median"])
    return out


def from_bundle(path: Path) -> tuple[list[Variant], list[dict[str, Any]], dict[str, Any]]:
    """A verified bundle's rows (PyTorch models of the build, its artifacts), its sensitivity table, its manifest."""
    from edgekit.bundle import verify
    from edgekit.errors import BundleError

    manifest, problems = verify(path)
    if problems:
        raise BundleError(f"{path}: {problems[0]}")
    source, task = str(path), task_kind(manifest)
    rows: list[Variant] = []
    d = manifest.get("distill")
    selection = (d or {}).get("selection") or {}
    shipped, model_parameters = selection.get("shipped", "distilled"), selection.get("model_parameters")
    keys = {"classification": ("accuracy", "teacher_accuracy", "original_student_accuracy", "student_accuracy"),
            "language-model": ("perplexity", "teacher_perplexity", "original_student_perplexity",
                               "student_perplexity")}.get(task)
    if d and keys:  # an embedding's distill record scores cosine to the teacher, not the bundle's metric
        metric, teacher, original, student = keys
        rows += [Variant("teacher", source, "pytorch", "fp32", parameters=d.get("teacher_parameters"),
                         metric=metric, value=d.get(teacher), where=PYTORCH_WHERE),
                 Variant("[model] entry", source, "pytorch", "fp32", parameters=model_parameters, metric=metric,
                         value=d.get(original), where=PYTORCH_WHERE, note="ships" if shipped == "model" else ""),
                 Variant("distilled student", source, "pytorch", "fp32", parameters=d.get("student_parameters"),
                         metric=metric, value=d.get(student), where=PYTORCH_WHERE,
                         note="ships" if shipped == "distilled" else "not shipped")]
    if (p := manifest.get("prune")) and task in ("classification", "language-model"):
        key = "perplexity" if task == "language-model" else "accuracy"
        fmt = (lambda x: f"{x:.2f}") if key == "perplexity" else (lambda x: f"{x:.2%}")
        rows += [Variant(f"pruned {p['label']}" + (", KD-recovered" if p.get("recovery") else ""), source,
                         "pytorch", "fp32", parameters=p["parameters_after"], metric=key,
                         value=p[f"{key}_after"], where=PYTORCH_WHERE,
                         note=f"{p['nonzero_after']:,} non-zero of {p['parameters_before']:,} before pruning; "
                              f"{fmt(p[f'{key}_dense'])} unpruned, {fmt(p[f'{key}_pruned'])} before recovery")]
    model, validation = manifest["model"], manifest.get("validation") or {}
    artifacts = []
    if manifest.get("baseline"):
        b = manifest["baseline"]
        artifacts.append((b["precision"], b["bytes"], b["validation"], []))
    artifacts.append((model["precision"], model["bytes"], validation, (manifest.get("budgets") or {}).get("checks", [])))
    for precision, size, v, checks in artifacts:
        where = (f"{(v.get('runtime') or {}).get('runtime', '?')} {(v.get('runtime') or {}).get('version', '')} on "
                 f"this host" + ("" if v.get("where") == "target-runtime" else " (host twin)")).replace("  ", " ")
        row = Variant(f"{model['format']}/{model['backend']} {precision}", source, "build", precision, size,
                      where=where, budgets=checks)
        metrics = v.get("metrics") or {}
        lat = v.get("host_latency_ms") or {}
        row.latency = _latency(lat) if v.get("where") == "target-runtime" else {}
        if task == "language-model":
            row.metric, row.value = "perplexity", metrics.get("perplexity")
            row.agreement = metrics.get("greedy_agreement")
            row.tokens_per_s = 1000.0 / row.latency["p50"] if row.latency.get("p50") else None
            row.time_to_first_token_ms = metrics.get("time_to_first_token_ms")
        else:
            row.metric, row.value, row.agreement = v.get("metric"), v.get("value"), v.get("top1_agreement")
        rows.append(row)
    sensitivity = (((model.get("export_details") or {}).get("quantization") or {}).get("sensitivity") or {})
    return rows, list(sensitivity.get("layers") or []), manifest


def from_run(run: Any) -> Variant:
    """A stored run of the results store, with its budget checks against the bundle's recorded profile."""
    from edgekit.budgets import for_bench, from_manifest

    report, manifest = run.report, run.manifest or {}
    dev = report.get("device") or {}
    where = ", ".join(str(x) for x in (dev.get("node"), dev.get("arch"), dev.get("cpu_model")) if x) or "?"
    met = report.get("metrics") or {}
    task = task_kind(manifest) if manifest else (met.get("task") or "classification")
    row = Variant(f"{run.format or '?'}/{run.backend or '?'} {run.precision or '?'} on {run.profile or '?'}",
                  run.bundle_path or "results store", "run", run.precision, run.model_bytes, where=where,
                  run_id=run.run_id, when=run.created_at, latency=_latency(report.get("latency_ms") or {}),
                  peak_memory_mb=run.peak_rss_mb, note=run.status if run.status != "OK" else "")
    if task == "language-model":
        row.metric, row.value = "perplexity", met.get("perplexity")
        row.tokens_per_s, row.time_to_first_token_ms = met.get("decode_tokens_per_s"), met.get("time_to_first_token_ms")
        row.agreement = met.get("greedy_agreement")
    else:
        row.metric, row.value, row.agreement = run.metric, run.metric_value, met.get("top1_agreement")
    if manifest and run.status == "OK":
        row.budgets = [c.to_dict() for c in for_bench(from_manifest(manifest), manifest, report, where)]
    return row


def collect(bundles: Sequence[Path] = (), store: Any = None, device: str | None = None, limit: int = 200,
            of_bundle: str | None = None) -> Report:
    """The report of ``bundles`` (and their stored runs, when a store is given), or of every stored run for
    ``device`` and/or ``of_bundle`` (a bundle path as the runner reported it, or a model sha256 prefix), or of
    every stored run. Stored runs are also grouped per device and bundle (:class:`History`)."""
    from edgekit.results.store import model_sha256

    variants: list[Variant] = []
    sensitivity: list[dict[str, Any]] = []
    notes: list[str] = []
    shas: dict[str, str] = {}
    history: list[History] = []
    for path in bundles:
        rows, layers, manifest = from_bundle(Path(path))
        variants += rows
        sensitivity = sensitivity or layers
        if (sha := model_sha256(manifest)) is not None:
            shas[sha] = str(path)
    if store is not None:
        runs = store.list_runs(device=device, bundle=of_bundle, limit=limit) if device or of_bundle or not bundles \
            else [r for r in store.list_runs(limit=100_000) if r.model_sha256 in shas]
        groups: dict[tuple[str, str], History] = {}
        for r in reversed(runs):  # the store lists newest first (created, then received): oldest first here
            variants.append(row := from_run(r))
            name = Path(r.bundle_path).name if r.bundle_path else "?"
            key = (f"{r.device_id or '?'} ({r.profile or '?'})", f"{name} ({(r.model_sha256 or '?')[:12]})")
            groups.setdefault(key, History(*key, runs=[])).runs.append(row)
        history = sorted(groups.values(), key=lambda h: (h.device, h.bundle))
        if not runs:
            what = " and ".join(x for x in (device and f"for {device}", of_bundle and f"of {of_bundle}") if x)
            notes.append("no stored runs " + (what or "of these bundles")
                         + ": `edgekit bench BUNDLE --on TARGET` measures and stores them")
    mark_pareto(variants)
    for i, v in enumerate(variants, 1):
        v.number = i
    title = "edgekit report — " + (", ".join(Path(b).name for b in bundles) if bundles
                                   else " · ".join(x for x in (device, of_bundle) if x) or "all runs")
    return Report(title, variants, sensitivity, notes, history)


def mark_pareto(variants: list[Variant]) -> None:
    """Flag the rows no other row beats on both quality and speed (within each metric)."""
    by_metric: dict[str, list[Variant]] = {}
    for v in variants:
        if v.value is not None and v.speed is not None and v.metric:
            by_metric.setdefault(v.metric, []).append(v)
    for rows in by_metric.values():
        for v in rows:
            v.pareto = not any(_dominates(o, v) for o in rows if o is not v)


def _dominates(a: Variant, b: Variant) -> bool:
    """``a`` is at least as good as ``b`` on quality and speed, and better on one."""
    qa, qb = (-a.value, -b.value) if a.lower_is_better else (a.value, b.value)
    sa, sb = (a.speed, b.speed) if a.metric == "perplexity" else (-a.speed, -b.speed)  # tokens/s up, ms down
    return qa >= qb and sa >= sb and (qa > qb or sa > sb)


# ------------------------------------------------------------------ plots


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: without the XML declaration and doctype


def plots(report: Report) -> dict[str, str]:
    """name -> inline SVG: ``pareto`` (quality vs speed), ``size``, ``latency`` (distribution)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    out: dict[str, str] = {}
    metrics = list(dict.fromkeys(v.metric for v in report.variants if v.metric))
    for metric in metrics:
        rows = [v for v in report.variants if v.metric == metric and v.value is not None and v.speed is not None]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        lm = rows[0].metric == "perplexity"
        for v in rows:
            ax.scatter(v.speed, v.value, s=46 if v.pareto else 26, marker="o" if v.stage == "run" else "s",
                       color="#c0392b" if v.pareto else "#7f8c8d", zorder=3)
            ax.annotate(v.label, (v.speed, v.value), fontsize=7, xytext=(4, 3), textcoords="offset points")
        front = sorted((v for v in rows if v.pareto), key=lambda v: v.speed)
        if len(front) > 1:
            ax.plot([v.speed for v in front], [v.value for v in front], color="#c0392b", lw=1, ls="--",
                    label="Pareto front", zorder=2)
            ax.legend(loc="best")
        ax.set_xlabel("decode tokens/s (higher is better)" if lm else "latency p50, ms (lower is better)")
        ax.set_ylabel(f"{rows[0].metric} ({'lower' if lm else 'higher'} is better)")
        ax.set_title("quality against speed: squares measured by the build on this host, circles by bench runs")
        ax.grid(alpha=0.3)
        out[f"pareto-{metric}"] = _svg(fig)
    sized = [v for v in report.variants if v.size_bytes]
    if sized:
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.32 * len(sized)))
        labels = [v.label for v in sized]
        ax.barh(labels, [v.size_bytes / 1e6 for v in sized], color="#2980b9")
        ax.invert_yaxis()
        ax.set_xlabel("size, MB")
        ax.set_title("artifact size per variant")
        ax.grid(axis="x", alpha=0.3)
        out["size"] = _svg(fig)
    for per_token in (False, True):
        timed = [v for v in report.variants if v.latency.get("p50") is not None and (v.metric == "perplexity") == per_token]
        if not timed:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.36 * len(timed)))
        for i, v in enumerate(timed):
            lo, hi = v.latency.get("min", v.latency["p50"]), v.latency.get("max", v.latency["p50"])
            ax.plot([lo, hi], [i, i], color="#95a5a6", lw=1)
            ax.plot([v.latency["p50"], v.latency.get("p90", v.latency["p50"])], [i, i], color="#2c3e50", lw=6)
            ax.plot(v.latency["p50"], i, "o", color="white", ms=3)
            if "p99" in v.latency:
                ax.plot(v.latency["p99"], i, "|", color="#c0392b", ms=10)
        ax.set_yticks(range(len(timed)), [v.label for v in timed])
        ax.invert_yaxis()
        spread = [x for v in timed for x in v.latency.values() if x > 0]
        log = bool(spread) and max(spread) / min(spread) > 20
        if log:
            ax.set_xscale("log")
        unit = "ms per decoded token" if timed[0].metric == "perplexity" else "ms"
        ax.set_xlabel(f"latency, {unit}{' (log)' if log else ''}: line min-max, bar p50-p90, red tick p99")
        ax.set_title("latency distribution per variant" + (" (language models: per decoded token)" if per_token else ""))
        ax.grid(axis="x", alpha=0.3)
        out["latency-per-token" if per_token else "latency"] = _svg(fig)
    for lm in (False, True):  # history: each device and bundle's runs over time
        lines = [(h, [v for v in h.runs if v.when and (v.tokens_per_s if lm else v.latency.get("p50"))])
                 for h in report.history if (h.runs[0].metric == "perplexity") == lm]
        lines = [(h, rows) for h, rows in lines if rows]
        if not lines:
            continue
        from datetime import datetime

        fig, ax = plt.subplots(figsize=(7, 3.6))
        for h, rows in lines:
            ax.plot([datetime.fromisoformat(v.when) for v in rows],
                    [v.tokens_per_s if lm else v.latency["p50"] for v in rows], "o-", ms=4, lw=1,
                    label=f"{h.device} · {h.bundle}")
        ax.set_ylabel("decode tokens/s" if lm else "latency p50, ms")
        ax.set_title("history: each device and bundle's stored runs over time")
        ax.legend(loc="best", fontsize=7)
        ax.grid(alpha=0.3)
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        out["history-per-token" if lm else "history"] = _svg(fig)
    return out


# ------------------------------------------------------------------ writing

COLUMNS = ("#", "variant", "stage", "precision", "size", "parameters", "metric", "agreement", "latency p50 / p90",
           "decode tokens/s", "peak memory", "budgets", "Pareto", "measured on", "source")


HISTORY_COLUMNS = ("when", "#", "metric", "latency p50 / p90", "decode tokens/s", "peak memory", "budgets")


def _cells(v: Variant) -> dict[str, str]:
    def num(x: float | None, f: str) -> str:
        return "" if x is None else format(x, f)

    metric = "" if v.value is None else (f"{v.metric} {v.value:.3f}" if v.metric == "perplexity"
                                         else f"{v.metric} {v.value:.2%}")
    lat = v.latency
    return {
        "#": str(v.number),
        "variant": v.name + (f" ({v.note})" if v.note else ""),
        "stage": {"pytorch": "PyTorch", "build": "build", "run": "bench run", "trial": "search trial"}[v.stage],
        "precision": v.precision or "",
        "size": "" if v.size_bytes is None else (f"{v.size_bytes / 1e6:.2f} MB" if v.size_bytes >= 1e6
                                                 else f"{v.size_bytes / 1024:.1f} KiB"),
        "parameters": num(v.parameters, ","),
        "metric": metric,
        "agreement": num(v.agreement, ".1%"),
        "latency p50 / p90": "" if "p50" not in lat else f"{lat['p50']:.3f} / {lat.get('p90', float('nan')):.3f} ms",
        "decode tokens/s": num(v.tokens_per_s, ".1f"),
        "peak memory": "" if v.peak_memory_mb is None else f"{v.peak_memory_mb:.1f} MB",
        "budgets": v.budget_status,
        "Pareto": "yes" if v.pareto else "",
        "measured on": v.where + (f", {v.when}" if v.when else ""),
        "source": v.source + (f" (run {v.run_id[:12]})" if v.run_id else ""),
    }


def markdown(report: Report, images: dict[str, str]) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"- {n}" for n in report.notes]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for v in report.variants:
        cells = _cells(v)
        lines.append("| " + " | ".join(cells[c].replace("|", "\\|") for c in COLUMNS) + " |")
    budgeted = [v for v in report.variants if v.budgets]
    if budgeted:
        lines += ["", "## Budgets", "", "| variant | source | budget | status | measured | limit | measured on |",
                  "|---|---|---|---|---|---|---|"]
        for v in budgeted:
            for b in v.budgets:
                op = "<=" if b["upper"] else ">="
                measured = "" if b["measured"] is None else f"{b['measured']:.4g} {b['unit']}"
                lines.append(f"| {v.label} | {v.source} | {b['key']} | {b['status']} | {measured} | "
                             f"{op} {b['limit']:g} {b['unit']} | {b['where'] or ''} |")
    if report.history:
        lines += ["", "## History per device and bundle"]
        for h in report.history:
            lines += ["", f"### {h.device} · {h.bundle}", "", h.trend, "",
                      "| when | # | metric | latency p50 / p90 | decode tokens/s | peak memory | budgets |",
                      "|---|---|---|---|---|---|---|"]
            for v in h.runs:
                c = _cells(v)
                lines.append(f"| {v.when} | {v.number} | {c['metric']} | {c['latency p50 / p90']} | "
                             f"{c['decode tokens/s']} | {c['peak memory']} | {c['budgets']} |")
    if report.sensitivity:
        lines += ["", "## Per-layer int8 sensitivity", "", "| layer | type | params | drop (points) | keeps |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s.get('name')} | {s.get('kind')} | {s.get('params', 0):,} | {s.get('drop_points', 0):+.2f} | "
                  f"{s.get('precision')} |" for s in report.sensitivity]
    if images:
        lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in images.items()]
    return "\n".join(lines) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px;margin:12px 0}th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f6f8}tr.pareto td:first-child{font-weight:600}
.pass{color:#1e8449;font-weight:600}.fail{color:#c0392b;font-weight:700}.unmeasured{color:#888}
figure{margin:18px 0}figcaption{font-size:12px;color:#555}.notes{color:#555}
"""


def to_html(report: Report, svgs: dict[str, str]) -> str:
    e = html.escape
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(report.title)}</title>"
           f"<style>{CSS}</style></head><body>", f"<h1>{e(report.title)}</h1>"]
    out += [f"<p class=notes>{e(n)}</p>" for n in report.notes]
    out.append("<table id=variants><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr></thead><tbody>")
    for i, v in enumerate(report.variants):
        cells = _cells(v)
        out.append(f"<tr data-row={i} data-stage={v.stage}" + (" class=pareto" if v.pareto else "") + ">"
                   + "".join(f"<td data-col=\"{e(c)}\">{e(cells[c])}</td>" for c in COLUMNS) + "</tr>")
    out.append("</tbody></table>")
    budgeted = [v for v in report.variants if v.budgets]
    if budgeted:
        out.append("<h2>Budgets</h2><table id=budgets><thead><tr><th>variant</th><th>budget</th><th>status</th>"
                   "<th>measured</th><th>limit</th><th>measured on</th></tr></thead><tbody>")
        for v in budgeted:
            for b in v.budgets:
                status = {"pass": "pass", "fail": "fail"}.get(b["status"], "unmeasured")
                measured = "" if b["measured"] is None else f"{b['measured']:.4g} {b['unit']}"
                out.append(f"<tr data-budget=\"{e(b['key'])}\"><td>{e(v.label)}</td><td>{e(b['key'])}</td>"
                           f"<td class={status}>{e(b['status'])}</td><td>{e(measured)}</td>"
                           f"<td>{'&le;' if b['upper'] else '&ge;'} {b['limit']:g} {e(b['unit'])}</td>"
                           f"<td>{e(b['where'] or '')}</td></tr>")
        out.append("</tbody></table>")
    if report.history:
        out.append("<h2>History per device and bundle</h2>")
        for h in report.history:
            out.append(f"<section class=history data-device=\"{e(h.device)}\" data-bundle=\"{e(h.bundle)}\">"
                       f"<h3>{e(h.device)} · {e(h.bundle)}</h3><p class=trend>{e(h.trend)}</p><table><thead><tr>"
                       + "".join(f"<th>{c}</th>" for c in HISTORY_COLUMNS) + "</tr></thead><tbody>")
            for v in h.runs:
                c = _cells(v)
                c["when"] = v.when or ""
                out.append(f"<tr data-run=\"{e(v.run_id or '')}\">"
                           + "".join(f"<td data-col=\"{e(k)}\">{e(c[k])}</td>" for k in HISTORY_COLUMNS) + "</tr>")
            out.append("</tbody></table></section>")
    if report.sensitivity:
        out.append("<h2>Per-layer int8 sensitivity</h2><table id=sensitivity><thead><tr><th>layer</th><th>type</th>"
                   "<th>params</th><th>drop (points)</th><th>keeps</th></tr></thead><tbody>")
        out += [f"<tr><td>{e(str(s.get('name')))}</td><td>{e(str(s.get('kind')))}</td><td>{s.get('params', 0):,}</td>"
                f"<td>{s.get('drop_points', 0):+.2f}</td><td>{e(str(s.get('precision')))}</td></tr>"
                for s in report.sensitivity]
        out.append("</tbody></table>")
    for name, svg in svgs.items():
        caption = (f"{name.split('-', 1)[1]} against speed; the Pareto front is marked (red)." if name.startswith("pareto")
                   else "Artifact size per variant." if name == "size"
                   else "Stored runs over time, one line per device and bundle." if name.startswith("history")
                   else "Latency distribution per variant.")
        out.append(f"<figure id=plot-{name}>{svg}<figcaption>{e(caption)}</figcaption></figure>")
    out.append("<script type=application/json id=data>"
               + json.dumps([asdict(v) for v in report.variants]).replace("</", "<\\/") + "</script>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(report: Report, out: Path) -> dict[str, Path]:
    """``report.html`` (self-contained), ``report.md`` and the plots as ``report-NAME.svg`` beside it, each
    written atomically. Returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    svgs = plots(report)
    for stale in out.glob("report-*.svg"):  # plots of an earlier report in this folder
        stale.unlink()
    files = {}
    for name, svg in svgs.items():
        files[name] = out / f"report-{name}.svg"
        write_bytes_atomic(files[name], svg.encode())
    files["html"] = out / "report.html"
    write_bytes_atomic(files["html"], to_html(report, svgs).encode())
    files["md"] = out / "report.md"
    write_bytes_atomic(files["md"], markdown(report, {n: f"report-{n}.svg" for n in svgs}).encode())
    return files

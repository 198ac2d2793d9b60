"""The ``edgekit`` command: each command parses, calls one library function, prints.

User mistakes print ``error: <one line>`` and exit with the error's code
(see :mod:`edgekit.errors`); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import click

from edgekit import __version__
from edgekit.errors import EdgekitError, PlanError


@dataclass
class Settings:
    debug: bool = False
    profiles_dirs: list[Path] = field(default_factory=list)


class EdgekitGroup(click.Group):
    """Maps EdgekitError to ``error: <one line>`` and its exit code, and SIGINT / SIGTERM / SIGHUP to a clean
    stop with exit 128 + the signal number (130, 143, 129); see :mod:`edgekit.signals`."""

    def invoke(self, ctx: click.Context) -> Any:
        from edgekit.signals import Interrupted, handle_signals

        try:
            with handle_signals():
                return super().invoke(ctx)
        except EdgekitError as e:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            click.echo(f"error: {one_line(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except Interrupted as e:
            click.echo(f"error: interrupted by {e.name}{_after_interrupt(ctx.invoked_subcommand, e.completed)}",
                       err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            ctx.exit(130)


def one_line(text: str) -> str:
    """``text`` as one printable line: newlines and other control characters (a file name or a device's
    answer may hold them, terminal escapes included) are shown escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _after_interrupt(command: str | None, completed: bool) -> str:
    """What an interrupt left behind, by command."""
    if command == "build":
        return ("; it came as the bundle was swapped in, which finished: the bundle is complete" if completed
                else "; nothing was written")
    if command == "distill":
        return "; the checkpoints of finished epochs are kept in --out (--resume continues)"
    return ""


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--profiles-dir", "profiles_dirs", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Extra folder of device profile TOMLs (repeatable; also $EDGEKIT_PROFILES_DIR).")
@click.version_option(__version__, prog_name="edgekit")
@click.pass_context
def cli(ctx: click.Context, debug: bool, profiles_dirs: tuple[Path, ...]) -> None:
    """Distill, quantize and export PyTorch models for phones and boards, and prove them.

    \b
    Start with:  edgekit profiles list
                 edgekit build --device pixel8
    """
    ctx.obj = Settings(debug, list(profiles_dirs))


def _console(stderr: bool = False, file: Any = None):
    from rich.console import Console

    return Console(stderr=stderr, file=file, highlight=False)


def _e(value: Any) -> str:
    """Text from a file, a device or a user, made safe to print through rich (its [markup] is shown as is)."""
    from rich.markup import escape

    return escape(str(value))


def _registry(ctx: click.Context):
    from edgekit.profiles import ProfileRegistry

    return ProfileRegistry(ctx.obj.profiles_dirs)


# ---------------------------------------------------------------- profiles
@cli.group()
def profiles() -> None:
    """List and show device profiles."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def profiles_list(ctx: click.Context, as_json: bool) -> None:
    """Every known device and its default path."""
    from edgekit.profiles import BUILTIN_DIR

    reg = _registry(ctx)
    items = reg.load_all()
    if as_json:
        click.echo(json.dumps([p.model_dump(mode="json") for p in items], indent=2))
        return
    from rich.table import Table

    table = Table("device", "name", "default path", "units", "transport", "source")
    table.columns[0].no_wrap = table.columns[2].no_wrap = True
    for p in items:
        src = "built-in" if reg.files[p.id].parent == BUILTIN_DIR else str(reg.files[p.id].parent)
        table.add_row(p.id, _e(p.name), f"{p.default.format}/{p.default.backend}\n{p.default.quant}",
                      ",".join(cu.kind for cu in p.compute_units), p.transport, _e(src))
    _console().print(table)


@profiles.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def profiles_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """One device profile in full."""
    p = _registry(ctx).load(name)
    if as_json:
        click.echo(p.model_dump_json(indent=2))
        return
    from rich.table import Table

    con = _console()
    con.print(f"[bold]{_e(p.name)}[/] ({p.id}) — {_e(p.soc)}")
    con.print(f"CPU: {p.cpu_cores} cores, {_e(p.cpu)}; memory {p.memory_gb:g} GB; {p.os}/{p.arch}; "
              f"transport {p.transport}")
    if p.cpu_isa:
        con.print(f"ISA: {_e(p.cpu_isa.arch)} ({_e(', '.join(p.cpu_isa.features))}); emulated as QEMU -cpu "
                  f"{_e(p.cpu_isa.qemu_cpu)} (edgekit bench --on emu:{p.id})")
    con.print(f"default: {p.default.format}/{p.default.backend}, quantization {p.default.quant}")
    units = Table("unit", "name", "format/backend", "precisions", "note")
    for cu, path in p.paths():
        units.add_row(cu.kind, _e(cu.name), f"{path.format}/{path.backend}", ", ".join(path.precisions), _e(path.note))
    con.print(units)
    if p.quantization:
        rules = Table("format/backend", "weights", "activations", "granularity", "I/O")
        for r in p.quantization:
            rules.add_row(*(_e(x) for x in (f"{r.format}/{r.backend}", r.weights, r.activations, r.granularity, r.io)))
        con.print(rules)
    b = p.budgets
    lm = ", ".join(x for x in (
        f"decode >= {b.min_decode_tokens_per_s:g} tokens/s" if b.min_decode_tokens_per_s is not None else "",
        f"time to first token <= {b.max_time_to_first_token_ms:g} ms" if b.max_time_to_first_token_ms is not None
        else "") if x)
    con.print(f"budgets: model <= {b.max_model_mb:g} MB, peak memory <= {b.max_peak_memory_mb:g} MB, "
              f"p90 latency <= {b.p90_latency_ms:g} ms, accuracy drop <= {b.max_accuracy_drop:g} points"
              + (f"; language models: {lm}" if lm else "") + " (checked by build and bench: edgekit.budgets)")
    if p.notes:
        con.print(f"notes: {_e(p.notes)}")


# ---------------------------------------------------------------- build
@cli.command()
@click.option("--device", "-d", required=True, help="Device profile id (see `edgekit profiles list`).")
@click.option("--project", "-p", type=click.Path(path_type=Path), default=None,
              help="edgekit.toml or its folder  [default: ./edgekit.toml]")
@click.option("--format", "fmt", type=click.Choice(["executorch", "onnx", "tflite"]), default=None,
              help="Override the profile's default format.")
@click.option("--backend", default=None, help="Override the backend (xnnpack, coreml, vulkan, cpu, qnn, ...).")
@click.option("--quant", type=click.Choice(["none", "int8", "int8-qat", "int8-dynamic", "int8-weight-only",
                                          "int4-weight-only", "fp16", "mixed", "auto"]),
              default="auto",
              show_default=True,
              help="Quantize with the backend's own quantizer: int8 = W8A8 post-training, calibrated on the "
                   "project's calib split; int8-qat = quantization-aware fine-tuning on the train split; "
                   "int8-dynamic = int8 weights, activations quantized at run time; int8-weight-only = int8 weights, "
                   "float activations (TFLite); int4-weight-only = 4-bit grouped "
                   "linear weights (ExecuTorch/XNNPACK); fp16 = half precision (ONNX); mixed = int8 with the most "
                   "sensitive layers kept float until the accuracy budget is met (see quantize-report); "
                   "auto = the profile's recommended scheme (`edgekit profiles list`); none = fp32 only. "
                   "A language model takes int8-weight-only or int4-weight-only (each format's own LLM recipe, "
                   "embedding and output layer int8: see [language_model.quantize]); auto builds it in fp32.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=128, show_default=True,
              help="Calibration samples for --quant int8.")
@click.option("--qat-epochs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fine-tuning epochs for --quant int8-qat.")
@click.option("--group-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Input features per scale for --quant int4-weight-only (LiteRT: 32, 64, 128 or 256; ONNX "
                   "Runtime: a power of two >= 16).")
@click.option("--keep-float", "keep_float", multiple=True, metavar="LAYER",
              help="--quant mixed: keep this layer (module path, e.g. features.0) in float instead of searching "
                   "(repeatable).")
@click.option("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
              help="Accuracy budget for quantized builds, in points below fp32  [default: the profile's]")
@click.option("--distill/--no-distill", default=True, show_default=True,
              help="When the project declares a [teacher]: train a student from it with the [distill] "
                   "settings and ship it if it is significantly better than the [model] on the calib split "
                   "(with --quant int8-qat, QAT also learns from the teacher).")
@click.option("--prune", "prune", multiple=True, metavar="KIND:RATIO",
              help="Prune before quantizing: structured:RATIO (whole channels, RATIO of the parameters removed: "
                   "smaller and faster everywhere; structured:latency=RATIO: of the fp32 latency measured here; a "
                   "language model loses MLP neurons and query heads), unstructured:RATIO (that fraction of each layer's weights zeroed: "
                   "smaller compressed, not faster) or 2:4; then KD from the unpruned model recovers it. With "
                   "--search, each --prune is a search dimension beside no pruning.")
@click.option("--prune-epochs", type=click.IntRange(min=0), default=20, show_default=True,
              help="--prune: KD recovery epochs (0: none).")
@click.option("--prune-importance", type=click.Choice(["magnitude", "taylor"]), default="magnitude",
              show_default=True, help="--prune structured: how channels are ranked (weight L2, or |weight x gradient| "
                                      "on train data).")
@click.option("--budget", "budget", multiple=True, metavar="KEY=VALUE",
              help="Override one of the profile's budgets for this build (repeatable): model_mb, peak_memory_mb, "
                   "latency_p90_ms, accuracy_drop (points), decode_tokens_per_s, time_to_first_token_ms.")
@click.option("--fail-on-budget/--no-fail-on-budget", default=True, show_default=True,
              help="Exit with code 10 when a measured number misses a budget (the bundle is written either way).")
@click.option("--validate-on", "validate_on", type=click.Choice(["host", "emu"]), default="host", show_default=True,
              help="emu: also run the bundle on the profile's arm64 CPU under QEMU (edgekit emu; as `edgekit bench "
                   "--on emu:DEVICE`) before it is written, and record it as validation.arm64; a quantized "
                   "classifier that misses the accuracy budget there fails the build.")
@click.option("--search", "do_search", is_flag=True,
              help="Try the recipes the profile allows (formats x schemes, with and without KD, and pruned by each "
                   "--prune beside unpruned), measure each on "
                   "--on, keep the Pareto front and ship the best within budgets (study in <out>.search/, "
                   "resumable; report in <out>.search/report.html). --format / --quant narrow the space.")
@click.option("--max-trials", type=click.IntRange(min=1), default=12, show_default=True,
              help="--search: recipes to measure (recipes measured before in the study count).")
@click.option("--on", "target", default="local", show_default=True, metavar="TARGET",
              help="--search: where each trial runs (local, ssh://user@host, adb[:SERIAL]).")
@click.option("--objective", type=click.Choice(["latency", "size", "metric", "memory"]), default="latency",
              show_default=True, help="--search: which trial of the Pareto front within budgets ships.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Bundle folder  [default: build/<device>]")
@click.option("--force", is_flag=True, help="Replace an existing bundle (atomically).")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop; no work is done.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON when done.")
@click.pass_context
def build(ctx: click.Context, device: str, project: Path | None, fmt: str | None, backend: str | None,
          quant: str, calib_samples: int, qat_epochs: int, group_size: int, keep_float: tuple[str, ...],
          max_accuracy_drop: float | None, distill: bool, prune: tuple[str, ...], prune_epochs: int,
          prune_importance: str, budget: tuple[str, ...], fail_on_budget: bool,
          validate_on: str, do_search: bool, max_trials: int, target: str, objective: str, out: Path | None, force: bool,
          dry_run: bool, as_json: bool) -> None:
    """Export, validate and bundle the project's model for DEVICE, and check the measured numbers against the
    device's budgets (exit code 10 when one is missed; the bundle is still written)."""
    from edgekit.api import plan_build
    from edgekit.budgets import parse_overrides, raise_if_missed
    from edgekit.bundle import check_destination

    request = plan_build(device, project, quant=quant, format=fmt, backend=backend, distill=distill, out=out,
                         profiles_dirs=ctx.obj.profiles_dirs, calib_samples=calib_samples, qat_epochs=qat_epochs,
                         group_size=group_size, keep_float=keep_float, max_accuracy_drop=max_accuracy_drop,
                         budget=parse_overrides(budget), validate_on=validate_on,
                         prune=prune[0] if len(prune) == 1 and not do_search else None, prune_epochs=prune_epochs,
                         prune_importance=prune_importance)
    profile, spec, plan, out = request.profile, request.project, request.plan, request.out
    if do_search:
        _search(ctx, request, fmt, quant, max_trials, target, objective, force, fail_on_budget, dry_run, prune,
                {"prune_epochs": prune_epochs, "prune_importance": prune_importance} if prune else {})
        return
    if len(prune) > 1:
        raise PlanError(f"give --prune once for a build (got {', '.join(prune)}); several are search dimensions "
                        "with --search")
    if dry_run:
        _print_plan(_console(), plan, spec, out)
        return
    check_destination(out, force)

    from edgekit.pipeline import build as run_build

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        log, terminal = stack.enter_context(_native_output_to_log(ctx.obj.debug))
        con = _console(stderr=as_json, file=terminal[as_json] if terminal else None)  # --json: progress on stderr
        _print_plan(con, plan, spec, out)
        status = stack.enter_context(con.status("starting"))
        last = [None, t0]

        def on_stage(name: str, detail: str) -> None:
            now = time.perf_counter()
            if name == last[0]:  # progress within a stage
                status.update(f"{name}: {detail}")
                return
            if last[0]:
                con.print(f"  [green]✓[/] {last[0]} ({now - last[1]:.1f} s)")
            last[:] = [None if name == "done" else name, now]
            status.update(f"{name}: {detail}")

        try:
            result = run_build(profile, spec, plan, out, force=force, on_stage=on_stage)
        except EdgekitError:
            status.stop()
            con.print(f"  [red]✗[/] {last[0]}" + (f" (library messages: {_e(_kept_log(log))})" if log else ""))
            raise
    con = _console()
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2, sort_keys=True))
    else:
        _print_summary(con, result, profile, time.perf_counter() - t0)
    raise_if_missed(result.budgets, f"the bundle ({result.bundle}) was written, but it", fail_on_budget)


def _search(ctx: click.Context, request: Any, fmt: str | None, quant: str, max_trials: int, target: str,
            objective: str, force: bool, fail_on_budget: bool, dry_run: bool, prune: tuple[str, ...] = (),
            plan_options: dict[str, Any] | None = None) -> None:
    """``build --search``: edgekit.search, with progress lines and the pick's summary."""
    from edgekit.budgets import BudgetMissed, EXIT_CODE
    from edgekit.bundle import check_destination
    from edgekit.search import candidates, search

    profile, spec, out = request.profile, request.project, request.out
    con = _console()
    if dry_run:
        for r in candidates(profile, spec, target == "local", fmt, quant, plan_options, distill=request.plan.distill,
                            prune=prune):
            con.print(f"  {_e(r.describe())}")
        return
    if out.exists() and not force:
        check_destination(out, force)
    with _native_output_to_log(ctx.obj.debug) as (_, terminal):
        con = _console(file=terminal[0] if terminal else None)
        result = search(profile, spec, out, max_trials=max_trials, target=target, objective=objective,
                        budget=dict(request.plan.budgets), fmt=fmt, quant=quant, say=lambda msg: con.print(_e(msg)),
                        distill=request.plan.distill, prune=prune, plan_options=plan_options)
    con = _console()
    if result.report is not None:
        con.print(f"report: {_e(result.report)} (every trial)")
    if result.pick is None:
        raise EdgekitError(f"every trial of the search failed; see {result.report}")
    con.print(f"bundle: [bold]{_e(out)}[/] (trial #{result.pick.number}: {_e(result.pick.recipe.describe())})")
    if not result.within_budgets and fail_on_budget:
        raise BudgetMissed("no trial of the search is within every budget: " + "; ".join(result.missed or ["see the report"])
                           + f" (the closest was shipped; exit code {EXIT_CODE}; --no-fail-on-budget to exit 0)")


def _print_plan(con: Any, plan: Any, spec: Any, out: Path) -> None:
    con.print(f"[bold]edgekit build[/] — project {_e(repr(spec.name))} ({_e(spec.file)})")
    for label, value in plan.describe():
        con.print(f"  {label:<17} {_e(value)}")
    con.print(f"  {'bundle':<17} {_e(out)}")


def _print_arm64(con: Any, manifest: dict) -> None:
    """--validate-on emu: what the bundle scored on the profile's arm64 CPU under QEMU, next to this host."""
    a = (manifest.get("validation") or {}).get("arm64")
    if not a:
        return
    m = a.get("metrics") or {}
    score = (f"{a['metric']} {a['value']:.2%} (this host: {a['host_value']:.2%})" if "value" in a else
             ", ".join(f"{k} {m[k]:.4g}" for k in ("perplexity", "top1_agreement", "max_abs_error") if k in m))
    con.print(f"  validated on arm64: {_e(a['emulator'])} -cpu {_e(a['qemu_cpu'])}: {_e(score)}"
              + (f"; [red]fallback: {_e(a['fallback'])}[/]" if a.get("fallback") else ""))


def _print_npu(con: Any, manifest: dict) -> None:
    """The compile stage's record: what was compiled for which chip, and the emulator against the CPU."""
    q = (manifest["model"].get("export_details") or {}).get("qnn")
    if not q:
        return
    chip = f"{q['chip']} (HTP v{q['htp_arch']})"
    if not q.get("compiled"):
        con.print(f"  [bold red]NPU: NOT compiled for {_e(chip)} and NOT validated on its emulator[/]: "
                  + _e("pip install 'edgekit[qnn]' (the phone will compile the model at first load)"))
        return
    c, v, cpu = q["compiled"], manifest["validation"], manifest["validation"].get("cpu") or {}
    litert = "litert" in c
    cpu_name = "LiteRT CPU" if litert else "onnxruntime CPU EP"
    against = (v.get("against") or {}).get(cpu_name) or {}
    p = q["placement"]
    files = " + ".join([c["file"], *c["binaries"]])
    placed = (f"all {p['ops']} ops on the NPU in {p['partitions']} partition{'s' if p['partitions'] > 1 else ''}"
              if litert else f"all {p['nodes']} nodes on the HTP")
    tool = f"LiteRT {c['litert']}, QNN {c['qnn']}" if litert else f"QNN {c['qnn']}, onnxruntime-qnn {c['onnxruntime_qnn']}"
    con.print(f"  NPU: compiled for {_e(chip)} in {c['seconds']:.2f} s ({_e(tool)}): {_e(files)} "
              f"({c['bytes'] / 1024:.1f} KiB); {placed}")
    cpu_short = "LiteRT CPU" if litert else "CPU EP"
    line = (f"  HTP emulator, {v['n_samples']} eval samples: {v['metric']} {v['value']:.2%} (PyTorch "
            f"{v['reference_value']:.2%}, {cpu_short} {cpu.get('value', float('nan')):.2%} on all "
            f"{cpu.get('n_samples')})" if v.get("metric") == "accuracy" else
            f"  HTP emulator, {v['n_samples']} eval samples")
    if against:
        agree = against.get("top1_agreement")
        line += (f"; against the {cpu_short}: " + (f"top-1 agreement {agree:.1%}, " if agree is not None else "")
                 + f"max abs difference {against['max_abs_error']:.3g}")
    con.print(line + f"; {q['emulator_ms_per_call']:.1f} ms per call on the emulator (not the phone's speed)")


def _print_summary(con: Any, result: Any, profile: Any, seconds: float) -> None:
    from rich.table import Table

    v, m = result.validation, result.manifest["model"]
    where = ("in its target runtime" if v.where == "target-runtime" else "on Qualcomm's HTP emulator"
             if v.where == "htp-emulator" else f"on a host twin: {result.plan.host_twin}")
    con.print(f"[bold]build summary[/] — {m['file']} {m['format']}/{m['backend']} {m['precision']}, "
              f"validated {where} ({v.runtime.get('runtime')} {v.runtime.get('version')}, {v.n_samples} samples)")
    if (d := result.manifest.get("distill")) and d.get("task") == "embedding":
        s, i = d["student"], d["initial_student"]
        con.print(f"  distilled: {d['method']} loss, {d['student_parameters']:,} of the teacher's "
                  f"{d['teacher_parameters']:,} parameters ({_e(d['student_entry'])}), best epoch {d['best_epoch']} "
                  f"of {d['epochs_run']}; against the teacher on the eval split: cosine {s['cosine_mean']:.4f} mean / "
                  f"{s['cosine_min']:.4f} min, retrieval agreement {s['retrieval_agreement']:.1%} (before training "
                  f"{i['cosine_mean']:.4f}, {i['retrieval_agreement']:.1%})")
    elif d and d.get("task") == "language-model":
        con.print(f"  distilled: token-level {d['method']} KD T={d['temperature']:g} α={d['alpha']:g} on the "
                  f"teacher's top {d['top_k'] or 'all'} logits, best epoch {d['best_epoch']} of {d['epochs_run']}; "
                  f"eval perplexity: teacher {d['teacher_perplexity']:.2f}, student {d['original_student_perplexity']:.2f} (model "
                  f"entry) -> {d['student_perplexity']:.2f} (distilled)")
    elif d:
        con.print(f"  distilled: {d['method']} T={d['temperature']:g} α={d['alpha']:g}, best epoch "
                  f"{d['best_epoch']} of {d['epochs_run']}; teacher {d['teacher_accuracy']:.2%}, student "
                  f"{d['original_student_accuracy']:.2%} (model entry) -> {d['student_accuracy']:.2%} (distilled) "
                  "on the eval split")
    if d and (s := d.get("selection")):
        which = "the distilled student" if s["shipped"] == "distilled" else "the model entry, not the distilled student"
        con.print(f"  ships {which}: {_e(s['reason'])}")
    if p := result.manifest.get("prune"):
        rec = p["recovery"]
        lm = "perplexity_dense" in p
        fmt = (lambda x: f"{x:.2f}") if lm else (lambda x: f"{x:.2%}")
        key = "perplexity" if lm else "accuracy"
        con.print(f"  pruned {p['label']}: {p['parameters_after']:,} parameters ({p['nonzero_after']:,} non-zero) of "
                  f"{p['parameters_before']:,}; eval {key} {fmt(p[key + '_dense'])} unpruned -> "
                  f"{fmt(p[key + '_pruned'])} pruned -> {fmt(p[key + '_after'])} "
                  + (f"after {rec['epochs']} epochs of KD from the unpruned model (best epoch {rec['best_epoch']})"
                     if rec else "(no recovery)") + f"; compressed {m['compressed_bytes'] / 1024:.1f} KiB")
    columns = [("fp32", result.baseline, result.manifest["baseline"]["bytes"])] if result.baseline else []
    columns.append((m["precision"], v, m["bytes"]))
    table = Table("", *[c[0] for c in columns], "PyTorch fp32")
    rows = {
        "size": [f"{b / 1024:.1f} KiB" if b < 1 << 20 else f"{b / 1e6:.1f} MB" for _, _, b in columns] + [""],
        v.metric: [f"{c[1].value:.2%}" for c in columns] + [f"{v.reference_value:.2%}"],
    }
    if v.top1_agreement is not None:
        rows["top-1 agreement with fp32"] = [f"{c[1].top1_agreement:.1%}" for c in columns] + [""]
    if "cosine_min" in v.metrics and v.top1_agreement is None:
        rows["cosine to PyTorch (mean / min)"] = [
            f"{c[1].metrics['cosine_mean']:.5f} / {c[1].metrics['cosine_min']:.5f}" for c in columns] + [""]
    if "perplexity" in v.metrics:
        rows["perplexity (eval)"] = [f"{c[1].metrics['perplexity']:.3f}" for c in columns] + \
            [f"{v.metrics['reference_perplexity']:.3f}"]
        rows["greedy agreement with PyTorch"] = [f"{c[1].metrics['greedy_agreement']:.1%}" for c in columns] + [""]
        rows["max abs logit error"] = [f"{c[1].max_abs_error:.2e}" for c in columns] + [""]
        rows["host decode (median)"] = [f"{c[1].host_latency_ms['median']:.3f} ms/token" for c in columns] + [""]
        rows = {k: r for k, r in rows.items() if k != "size"} | {"size": rows["size"]}
    else:
        rows |= {
            "max abs error": [f"{c[1].max_abs_error:.2e}" for c in columns] + [""],
            "SQNR vs PyTorch": [_sqnr(c[1]) for c in columns] + [""],
            "host latency (median)": [f"{c[1].host_latency_ms['median']:.3f} ms"
                                      + (" (emulator)" if c[1].where == "htp-emulator" else "") for c in columns] + [""],
        }
    for label, values in rows.items():
        table.add_row(label, *values)
    con.print(table)
    if result.sensitivity is not None:
        _print_sensitivity(con, result.sensitivity)
    check = (f"greedy continuation identical, perplexity and logits within {v.atol:.2g}"
             if "perplexity" in v.metrics and v.atol is not None else
             f"perplexity {v.metrics['perplexity_increase']:+.2%} against PyTorch fp32, greedy agreement "
             f"{v.metrics['greedy_agreement']:.1%} (the task's thresholds for a quantized model)"
             if "perplexity" in v.metrics else f"max abs error <= {v.atol:g}" if v.atol is not None
             else f"ran in the runtime, accuracy drop {v.accuracy_drop:.2f} points (the budget is checked below)"
             if v.max_accuracy_drop is not None else f"the {result.plan.task} task's thresholds")
    con.print(f"  validated: {check}; latency is this host's (batch {v.host_latency_ms['batch']}), not the device's")
    _print_npu(con, result.manifest)
    _print_arm64(con, result.manifest)
    for w in result.warnings:
        con.print(f"  [yellow]warning[/]: {_e(w)}")
    from edgekit.budgets import print_checks

    print_checks(con, result.budgets, f"{profile.id}'s budgets")
    con.print(f"bundle: [bold]{_e(result.bundle)}[/] (built in {seconds:.1f} s)")
    con.print(f"  run it:   python -m edgekit_runner {_e(result.bundle)}")
    con.print(f"  check it: edgekit inspect {_e(result.bundle)}")


def _print_sensitivity(con: Any, report: Any) -> None:
    from rich.table import Table

    table = Table("layer", "type", "params", f"{report.metric_name} (only this layer int8)", "drop (points)",
                  "output SQNR", "keeps", title="per-layer int8 sensitivity (eval split, simulated)")
    for s in report.layers:
        sqnr = "exact" if s.sqnr_db is None else f"{s.sqnr_db:.1f} dB"
        keep = "[yellow]fp32[/]" if s.precision == "fp32" else "int8"
        table.add_row(_e(s.name), s.kind, f"{s.params:,}", f"{s.metric:.2%}", f"{s.drop_points:+.2f}", sqnr, keep)
    con.print(table)
    chosen = _e(", ".join(report.float_layers) or "none")
    con.print(f"  fp32 {report.fp32_metric:.2%}; every layer int8 {report.int8_metric:.2%}; mixed "
              f"{report.mixed_metric:.2%} with float layers: {chosen} (+{report.float_cost_bytes / 1024:.1f} KiB); "
              f"budget {report.budget_points:g} points; {report.evaluations} simulated evaluations")


def _sqnr(v: Any) -> str:
    finite = [o.sqnr_db for o in v.outputs if o.sqnr_db is not None]
    return f"{min(finite):.1f} dB" if finite else "exact"


@contextlib.contextmanager
def _native_output_to_log(debug: bool) -> Iterator[tuple[str | None, Any]]:
    """Send everything the libraries print (C++ runtimes to fds 1/2, Python warnings) to a log
    file, so the terminal shows only edgekit's progress. Yields (log path, (terminal stdout,
    terminal stderr)) for edgekit's own output. Skipped under --debug and when stdout is not a
    real file descriptor."""
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        fds = ()
    if debug or fds != (1, 2):
        yield None, None
        return
    from edgekit.pipeline import LOG_PREFIX  # (imports torch; only builds get here)

    fd, log = tempfile.mkstemp(prefix=f"{LOG_PREFIX}{os.getpid()}-", suffix=".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    terminal = (os.fdopen(os.dup(saved[0]), "w", buffering=1), os.fdopen(os.dup(saved[1]), "w", buffering=1))
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    keep = False
    try:
        yield log, terminal
    except KeyboardInterrupt:  # interrupted: nothing is kept
        raise
    except BaseException:
        keep = True  # an error: its message points at the log
        raise
    finally:
        from edgekit.signals import shielded

        with shielded():  # a second Ctrl-C here must not leave stdout and stderr pointing at the log
            sys.stdout.flush()
            sys.stderr.flush()
            for stream in terminal:
                stream.close()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for f in (*saved, fd):
                os.close(f)
            if keep:
                os.replace(log, _kept_log(log))
            else:
                os.unlink(log)


def _kept_log(log: str) -> str:
    """Where a failed build's log is kept: out of the pattern of a running build's log (``edgekit-build-PID-``),
    so that a later build, removing the logs of builds that died, leaves it for the user."""
    from edgekit.pipeline import LOG_PREFIX

    folder, name = os.path.split(log)
    return os.path.join(folder, name.replace(LOG_PREFIX, f"{LOG_PREFIX}failed-", 1))


# ---------------------------------------------------------------- quantize-report
@cli.command("quantize-report")
@click.option("--device", "-d", required=True, help="Device profile id: its accuracy budget is the target.")
@click.option("--project", "-p", type=click.Path(path_type=Path), default=None,
              help="edgekit.toml or its folder  [default: ./edgekit.toml]")
@click.option("--calib-samples", type=click.IntRange(min=1), default=128, show_default=True,
              help="Calibration samples.")
@click.option("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
              help="Accuracy budget in points below fp32  [default: the profile's]")
@click.option("--distill/--no-distill", default=True, show_default=True,
              help="When the project declares a [teacher]: analyse the student the build would distil and "
                   "ship (trained first, as `build` does), not the [model] entry.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def quantize_report(ctx: click.Context, device: str, project: Path | None, calib_samples: int,
                    max_accuracy_drop: float | None, distill: bool, as_json: bool) -> None:
    """Per-layer int8 sensitivity, and the layers --quant mixed would keep in float.

    Each Conv/Linear layer is quantized alone (PT2E, simulated in PyTorch) and measured on the
    eval split; then layers are kept float, most damaging first, until the budget is met. The
    network analysed is the one `build` ships with the same --distill/--no-distill choice."""
    from edgekit.plan import accuracy_budget
    from edgekit.project import load_data, load_model, load_project

    profile = _registry(ctx).load(device)
    budget = accuracy_budget(profile, max_accuracy_drop)  # the analysis needs no backend: any profile works
    spec = load_project(project)
    con = _console(stderr=True)
    with con.status("loading the project") as status:
        import torch

        from edgekit.quantize.sensitivity import analyze

        torch.manual_seed(spec.seed)
        splits = load_data(spec)
        model = load_model(spec)
        network = f"the [model] entry {spec.model.entry}"
        if distill and spec.teacher is not None:
            from edgekit.distill.project import distill_for_build

            from edgekit.selection import after_distill

            student, teacher, record = distill_for_build(spec, splits, model,
                                                         lambda msg: status.update(f"distill: {msg}"))
            chosen = after_distill(spec, splits, model, student, teacher)  # the build's choice, made the same way
            if chosen.shipped == "distilled":
                model = student
                network = f"the distilled student {record['student_entry']} (teacher {spec.teacher.source})"
            else:
                network += f" (kept over the distilled student: {chosen.reason})"
        ev, n = splits["eval"], spec.inputs[0].shape[0]
        example = (torch.from_numpy(ev.x[:n]).clone(memory_format=torch.contiguous_format),)
        report = analyze(model, example, splits["calib"].x[:calib_samples], ev.x, ev.y, budget,
                         progress=status.update)
    if as_json:
        click.echo(json.dumps({"network": network, **report.to_dict()}, indent=2))
        return
    out = _console()
    out.print(f"analysed: {_e(network)}")
    _print_sensitivity(out, report)


# ---------------------------------------------------------------- inspect
@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and problems as JSON.")
def inspect(bundle: Path, as_json: bool) -> None:
    """Print a bundle's manifest and verify the sha256 of every file."""
    from edgekit_runner.manifest import Manifest

    from edgekit.bundle import verify
    from edgekit.errors import BundleError

    manifest, problems = verify(bundle)
    if as_json:
        click.echo(json.dumps({"manifest": manifest, "problems": problems}, indent=2, sort_keys=True))
    else:
        con = _console()
        m, v = manifest["model"], manifest.get("validation") or {}
        con.print(f"[bold]{_e(bundle)}[/] — {_e(manifest['profile']['name'])} ({_e(manifest['profile']['id'])}), "
                  f"built {_e(manifest['created_at'])}")
        con.print(_e(f"  model       {m['file']}: {m['format']}/{m['backend']} {m['precision']}, {m['bytes']} bytes"))
        typed = Manifest(manifest)
        con.print(_e(f"  task        {typed.task}"))
        for method in typed.methods:
            ins, outs = ([f"{t.name} {list(t.shape)} {t.dtype}" for t in ts] for ts in (method.inputs, method.outputs))
            con.print(_e(f"  {method.name:<11} {', '.join(ins)} -> {', '.join(outs)}"))
        if v:
            rt = v["runtime"]
            top1 = (f", top-1 agreement {fmt_number(v.get('top1_agreement'), '.1%')}"
                    if v.get("top1_agreement") is not None else "")
            con.print(_e(f"  validation  {v['where']} ({rt.get('runtime')} {rt.get('version')}): max abs err "
                         f"{fmt_number(v.get('max_abs_error'), '.2e')}{top1}, {v.get('metric')} "
                         f"{fmt_number(v.get('value'), '.2%')}"))
        if lm := manifest.get("language_model"):
            cache, met = lm["cache"], (v or {}).get("metrics", {})
            con.print(_e(f"  language    {lm['parameters']:,} parameters, context {lm['max_context']}, KV cache: "
                         f"{cache['strategy']} {cache['layout']} x {cache['layers']} layers; perplexity "
                         f"{fmt_number(met.get('perplexity'), '.3f')} (PyTorch {lm['reference_perplexity']:.3f})"))
        con.print(_e("  versions    " + ", ".join(f"{k} {val}" for k, val in manifest.get("versions", {}).items())))
        con.print(f"  files       {len(manifest['files'])} listed")
        for p in problems:
            con.print(f"  [red]✗[/] {_e(p)}")
        if not problems:
            con.print("  [green]✓[/] every file matches its sha256")
    if problems:
        raise BundleError(f"{bundle} failed verification: {'; '.join(problems)}")


from edgekit.results.cli import fmt_number, report, results, serve  # noqa: E402 (light: click only)

from edgekit.transport.cli import make_bench_command  # noqa: E402 (light: click + stdlib)

from edgekit.distill.cli import distill_command  # noqa: E402 (light: click only)


def _store_report(report: dict, manifest: dict) -> None:
    """``edgekit bench``'s hook: store the run; if it cannot be stored (an unusable results store, a report
    the store refuses), keep the report in a file and say where, so the run is not lost."""
    from edgekit.fsutil import write_bytes_atomic
    from edgekit.results import ResultsError
    from edgekit.results.store import ResultsStore

    try:
        ResultsStore().add(report, manifest=manifest)
    except ResultsError as e:
        from edgekit_runner.safejson import finite

        run_id = "".join(c for c in str(report.get("run_id", "unknown")) if c.isalnum())[:64] or "unknown"
        text = json.dumps(finite(report), indent=2, sort_keys=True, allow_nan=False).encode()
        for folder in (".", tempfile.gettempdir()):
            kept = Path(folder).absolute() / f"edgekit-report-{run_id}.json"
            try:
                write_bytes_atomic(kept, text)
                break
            except OSError:  # the working folder may be gone or read-only
                continue
        else:
            raise ResultsError(f"the run was not stored: {e}") from None
        raise ResultsError(f"the run was not stored: {e}; the report is kept in {kept}") from None


# ---------------------------------------------------------------- emu
@cli.group()
def emu() -> None:
    """The emulated arm64 target (edgekit bench BUNDLE --on emu:PROFILE): a Debian arm64 root under QEMU."""


@emu.command("setup")
@click.option("--runtime", "runtimes", multiple=True, metavar="NAME[==VERSION]",
              help="A runtime's venv to make too: onnxruntime, litert or executorch (repeatable; default: none; "
                   "the version defaults to this host's).")
@click.option("--rebuild", is_flag=True, help="Build the root again even if the cached one is usable.")
def emu_setup(runtimes: tuple[str, ...], rebuild: bool) -> None:
    """Build the cached arm64 root (debootstrap, no root needed) and the runtimes' venvs in it.

    \b
    Needs Debian's qemu-user-static (>= 10: bookworm-backports), proot and debootstrap.
    Everything is kept under $EDGEKIT_HOME/emu; a second run reuses it.
    """
    import time

    from edgekit import emu as emulation

    con = _console(stderr=True)
    wanted = [(name, version or None) for name, _, version in (r.partition("==") for r in runtimes)]
    for name, _ in wanted:
        if name not in emulation.RUNTIME_PACKAGES:
            raise click.BadParameter(f"{name!r} is not one of {', '.join(emulation.RUNTIME_PACKAGES)}",
                                     param_hint="--runtime")
    t0 = time.monotonic()
    tools = emulation.find_tools()
    con.print(f"emulator: {_e(tools.qemu_label)} through {_e(tools.proot)}")
    for w in emulation.check_cpu(tools, "cortex-a76"):
        con.print(f"[yellow]warning[/]: {_e(w)}")
    with con.status("arm64 root") as status:
        def step(message: str) -> None:
            status.update(_e(message))
            if not message.startswith(("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring",
                                       "Installing", "Checking", "Chosen", "Found", "Resolving", "Base system")):
                con.print(f"  {_e(message)}", style="dim")

        folder = emulation.ensure_root(tools, step, rebuild=rebuild)
        pythons = [emulation.ensure_venv(folder, tools, name, version, step) for name, version in wanted]
    click.echo(f"arm64 root: {folder}")
    for (name, _), python in zip(wanted, pythons, strict=True):
        click.echo(f"{name}: {python}")
    click.echo(f"ready in {time.monotonic() - t0:.0f} s; run: edgekit bench BUNDLE --on emu:PROFILE")


cli.add_command(serve)
cli.add_command(results)
cli.add_command(report)
cli.add_command(make_bench_command(store=_store_report))
cli.add_command(distill_command)


def main() -> None:
    cli(prog_name="edgekit")


if __name__ == "__main__":
    main()

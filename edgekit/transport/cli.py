"""``edgekit bench BUNDLE --on TARGET``: measure a bundle on a device and show what came back.

``edgekit/cli.py`` registers the command with the results store's hook::

    cli.add_command(make_bench_command(store=save_report))   # save_report(report, manifest)

``store`` is called once for every run that brought a report back (status OK, MODEL_ERROR,
or an INFRA_ERROR the runner itself reported), before the summary is printed. The exit
status is 0 for OK, :class:`~edgekit.transport.base.InfraError`'s code (8) for INFRA_ERROR,
:class:`~edgekit.transport.base.ModelError`'s (9) for MODEL_ERROR, and
:class:`~edgekit.budgets.BudgetMissed`'s (10) for an OK run that missed one of the device's budgets
(``--budget KEY=VALUE`` overrides one; ``--no-fail-on-budget`` exits 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from edgekit_runner import safejson

from edgekit.transport.base import (
    INFRA_ERROR,
    MODEL_ERROR,
    OK,
    TARGET_FORMS,
    InfraError,
    ModelError,
    RunOutcome,
    parse_target,
)
from edgekit.transport.bench import run_bundle

Store = Callable[[dict[str, Any], dict[str, Any]], None]


def make_bench_command(store: Store | None = None) -> click.Command:
    """The ``bench`` click command; ``store(report, manifest)`` keeps each report that came back."""

    @click.command("bench")
    @click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
    @click.argument("runner_args", nargs=-1, type=click.UNPROCESSED)
    @click.option("--on", "target", required=True, metavar="TARGET", help=f"Where to run: {TARGET_FORMS}.")
    @click.option("--runs", type=click.IntRange(min=1), default=None, help="Minimum timed runs  [default: runner's]")
    @click.option("--warmup", type=click.IntRange(min=0), default=None,
                  help="Minimum warm-up runs  [default: runner's]")
    @click.option("--threads", type=click.IntRange(min=1), default=None, help="Runtime threads  [default: runtime's]")
    @click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
                  help="Seconds the runner may take; a hung runner is killed.")
    @click.option("--connect-timeout", type=click.FloatRange(min=1), default=10, show_default=True,
                  help="Seconds to wait for the device to answer.")
    @click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
                  help="Extra attempts after a transient infrastructure failure (never after MODEL_ERROR).")
    @click.option("--python", default=None, help="The device's Python interpreter (a path or a name on its PATH).")
    @click.option("--identity", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="ssh private key file.")
    @click.option("--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE",
                  help="Extra `ssh -o` option, e.g. ProxyJump=gateway (repeatable).")
    @click.option("--budget", "budget", multiple=True, metavar="KEY=VALUE",
                  help="Override one of the bundle's device budgets (repeatable; keys as edgekit build --budget).")
    @click.option("--fail-on-budget/--no-fail-on-budget", default=True, show_default=True,
                  help="Exit with code 10 when a measured number misses a budget (the report is stored either way).")
    @click.option("--json", "as_json", is_flag=True, help="Print the outcome and the report as JSON.")
    def bench(bundle: Path, target: str, runs: int | None, warmup: int | None, threads: int | None, timeout: float,
              connect_timeout: float, retries: int, python: str | None, identity: Path | None,
              ssh_options: tuple[str, ...], budget: tuple[str, ...], fail_on_budget: bool, as_json: bool,
              runner_args: tuple[str, ...]) -> None:
        """Run BUNDLE on a device: latency, memory, accuracy, and what actually ran.

        \b
        TARGET:  local                       this host, clean environment
                 ssh://user@host[:port]      a board with sshd and your key
                 adb | adb:SERIAL            an Android device (see targets/android)
                 emu:PROFILE[?cpu=MODEL]     the profile's arm64 CPU under QEMU on this host
                                             (edgekit emu setup; timings not the device's)

        Arguments after `--` go to the runner unchanged, e.g.
        `edgekit bench build/pixel8 --on adb -- --min-seconds 5 --cpus 4-7`.
        """
        from rich.console import Console

        from edgekit import budgets

        overrides = budgets.parse_overrides(budget)
        spec = parse_target(target, python=python, identity=identity, ssh_options=ssh_options)
        progress = Console(stderr=True, highlight=False)

        def on_step(message: str) -> None:
            progress.print(f"  {message}", style="dim", markup=False)

        outcome = run_bundle(bundle, spec, runs, warmup, threads, timeout, retries, runner_args=runner_args,
                             connect_timeout=connect_timeout, on_step=on_step)
        checks = []
        if outcome.status == OK and outcome.report is not None:
            checks = budgets.for_bench(budgets.from_manifest(outcome.manifest or {}, overrides), outcome.manifest or {},
                                       outcome.report, outcome.target)
        if as_json:
            click.echo(json.dumps(safejson.finite({**outcome.to_dict(), "budgets": [c.to_dict() for c in checks]}),
                                  indent=2, sort_keys=True))
        else:
            con = Console(highlight=False)
            print_summary(con, bundle, outcome)
            budgets.print_checks(con, checks, f"budgets of {(outcome.manifest or {}).get('profile', {}).get('id', 'the device')}")
        if store is not None and outcome.report is not None:  # after the summary: a store failure loses nothing
            store(outcome.report, outcome.manifest or {})  # the results store (wired in edgekit/cli.py)
        if outcome.status == INFRA_ERROR:
            raise InfraError(outcome.error or "infrastructure error")
        if outcome.status == MODEL_ERROR:
            raise ModelError(f"the runtime on {outcome.target} refused the model: {outcome.error}")
        budgets.raise_if_missed(checks, f"the report was stored, but the bundle on {outcome.target}", fail_on_budget)

    return bench


def print_summary(con: Any, bundle: Path, outcome: RunOutcome) -> None:
    """One table: status, what ran (fallbacks in red), latency percentiles, accuracy, memory, device."""
    from rich.markup import escape
    from rich.table import Table

    r = outcome.report or {}
    rt, lat, met, mem, dev = (r.get(k) or {} for k in ("runtime", "latency_ms", "metrics", "memory", "device"))
    colour = {OK: "green", MODEL_ERROR: "red", INFRA_ERROR: "red"}[outcome.status]
    took = ", ".join(f"{k} {v:.1f} s" for k, v in outcome.seconds.items())
    con.print(f"[bold]edgekit bench[/] {escape(str(bundle))} on {escape(outcome.target)}: [{colour}]{outcome.status}"
              f"[/] ({outcome.attempts} attempt{'s' * (outcome.attempts != 1)}{'; ' + took if took else ''})")
    table = Table(show_header=False)
    rows = [("status", f"[{colour}]{outcome.status}[/]")]
    if outcome.error:
        rows.append(("error", f"[{colour}]{escape(outcome.error)}[/]"))
    if rt:
        ran = rt.get("provider") or rt.get("delegate") or "?"
        threads = rt.get("threads_effective", rt.get("threads"))
        rows += [("runtime", escape(f"{rt.get('runtime', '?')} {rt.get('version', '')}".strip())),
                 ("ran on", escape(f"{ran} (bundle built for {rt.get('target') or 'the default'})"
                                   + (f", threads: {threads}" if threads is not None else "")))]
    fallback = r.get("fallback") or rt.get("fallback")
    if fallback:
        rows.append(("FALLBACK", f"[bold red]{escape(str(fallback))}[/]"))
    if lat:
        values = (lat.get("p50", lat.get("median")), lat.get("p90"), lat.get("p99"))
        per = f"per {lat['per']}, {lat.get('n', '?')} tokens" if "per" in lat else \
            f"{lat.get('n', lat.get('runs', '?'))} runs, batch {lat.get('batch', '?')}"
        rows.append(("latency p50 / p90 / p99", " / ".join(map(_ms, values)) + f"  ({per})"))
    if met.get("task") == "language-model" or "decode_tokens_per_s" in met:
        rows += language_model_rows(met)
    elif met:
        rows += [(name, f"{met[key]:.2%}") for name, key in (("accuracy", "accuracy"),
                                                             ("top-1 agreement", "top1_agreement")) if key in met]
    peaks = [mem.get(k) for k in ("peak_rss_load_mb", "peak_rss_run_mb") if mem.get(k) is not None]
    if mem:
        rows.append(("memory peak", f"{max(peaks):.1f} MB" if peaks else
                     "unavailable: " + escape("; ".join(str(v) for v in (mem.get("unavailable") or {}).values()))))
    if dev:
        facts = (dev.get("board") or dev.get("node"), dev.get("cpu_model"), dev.get("os"), dev.get("arch"))
        rows.append(("device", escape(", ".join(str(f) for f in facts if f))))
    em = dev.get("emulation") if isinstance(dev.get("emulation"), dict) else None
    if em:
        extra = f"; features the device lacks: {', '.join(em['extra_features'])}" if em.get("extra_features") else ""
        missing = f"; lacks the device's {', '.join(em['missing_features'])}" if em.get("missing_features") else ""
        rows.append(("EMULATED", f"[bold yellow]{escape(str(em.get('emulator')))} -cpu {escape(str(em.get('qemu_cpu')))}"
                                 f" on {em.get('cores')} cores{escape(extra + missing)}: timings are not the "
                                 "device's[/]"))
    for label, value in rows:
        table.add_row(label, value)
    con.print(table)
    for w in outcome.warnings:
        con.print(f"  [yellow]warning[/]: {escape(w)}")
    if outcome.status == INFRA_ERROR and outcome.stderr_tail and outcome.stderr_tail not in (outcome.error or ""):
        con.print(f"[dim]{escape(outcome.stderr_tail)}[/]")


def language_model_rows(met: dict[str, Any]) -> list[tuple[str, str]]:
    """Decode speed, time to first token, prefill speed per prompt length, perplexity, greedy agreement."""
    rows = [("decode", f"{met['decode_tokens_per_s']:.1f} tokens/s"),
            ("time to first token", f"{_ms(met['time_to_first_token_ms'])} ({met['prompt_tokens']}-token prompt)"),
            ("prefill", ", ".join(f"{p['tokens_per_s']:.0f} tokens/s at {n}"
                                  for n, p in sorted(met.get("prefill", {}).items(), key=lambda kv: int(kv[0]))))]
    if "perplexity" in met:
        rows.append(("perplexity", f"{met['perplexity']:.3f} (PyTorch {met.get('reference_perplexity', float('nan')):.3f}"
                                   f", {met.get('eval_tokens', '?')} tokens)"))
    if "greedy_agreement" in met:
        rows.append(("greedy agreement", f"{met['greedy_agreement']:.0%} of {len(met.get('greedy_tokens', []))} tokens"))
    return rows


def _ms(value: Any) -> str:
    return f"{value:.3f} ms" if isinstance(value, (int, float)) else "n/a"

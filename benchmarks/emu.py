"""The digits bundles on arm64 under QEMU user-mode emulation against the same bundles on this x86-64 host.

Per bundle and emulated CPU: accuracy and top-1 agreement with the PyTorch reference, max abs error, on
arm64 (``edgekit bench --on emu:PROFILE[?cpu=...]``) and on x86-64 (``--on local``, the same runner and
runtime release), and the difference in correctly classified eval images (the runner reports counts, not each image's
top-1: where accuracy, agreement and max error are all equal, the two agree to the printed digits). Also the time of a first
``edgekit emu setup`` (if the cache was empty) and of a second one.

    .venv/bin/python benchmarks/emu.py [--runs 3]    # builds the bundles into build/emu-bench/; writes results/emu.*

Emulated timings are recorded in the JSON, never compared with a device's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = str(Path(sys.executable).parent / "edgekit")
# (label, profile, build options, emulated CPUs: None = the profile's own)
BUNDLES = [
    ("raspberry-pi-5 TFLite int8 (XNNPACK)", "raspberry-pi-5", ["--quant", "int8"], [None]),
    ("jetson-orin-nano ONNX fp16", "jetson-orin-nano", ["--quant", "fp16"], [None]),
    ("galaxy-s24 ONNX QDQ int8 (CPU EP)", "galaxy-s24", ["--format", "onnx", "--backend", "cpu", "--quant", "int8"],
     [None]),
    ("pixel8 ExecuTorch int8 (XNNPACK)", "pixel8", ["--quant", "int8"], [None, "max"]),
]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    c = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if check and c.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({c.returncode}): {c.stderr[-2000:]}")
    return c


def bench(bundle: Path, target: str, runs: int) -> dict:
    c = sh(EDGEKIT, "bench", str(bundle), "--on", target, "--json", "--runs", str(runs), "--warmup", "1",
           "--timeout", "3600", "--no-fail-on-budget", check=False)
    out = json.loads(c.stdout)
    if out["status"] != "OK":
        raise SystemExit(f"{target}: {out['status']}: {out.get('error')}")
    return out


def main() -> None:
    from edgekit.fsutil import cache_dir

    os.environ.setdefault("EDGEKIT_EMU_HOME", str(cache_dir() / "emu"))  # the tests' cached root, not a second one
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    t0 = time.monotonic()
    first = sh(EDGEKIT, "emu", "setup", "--runtime", "onnxruntime", "--runtime", "litert", "--runtime", "executorch")
    setup_first = time.monotonic() - t0
    t0 = time.monotonic()
    sh(EDGEKIT, "emu", "setup", "--runtime", "onnxruntime", "--runtime", "litert", "--runtime", "executorch")
    setup_second = time.monotonic() - t0
    rows = []
    for label, profile, options, cpus in BUNDLES:
        bundle = ROOT / "build" / "emu-bench" / profile
        sh(EDGEKIT, "build", "--device", profile, *options, "--out", str(bundle), "--force")
        x86 = bench(bundle, "local", args.runs)
        for cpu in cpus:
            target = f"emu:{profile}" + (f"?cpu={cpu}" if cpu else "")
            arm = bench(bundle, target, args.runs)
            em = arm["report"]["device"]["emulation"]
            a, x = arm["report"]["metrics"], x86["report"]["metrics"]
            n = a["n_samples"]
            rows.append({"bundle": label, "target": target, "emulator": em["emulator"], "qemu_cpu": em["qemu_cpu"],
                         "extra_features": em["extra_features"], "n": n,
                         "arm64": {k: a.get(k) for k in ("accuracy", "top1_agreement", "max_abs_error")},
                         "x86_64": {k: x.get(k) for k in ("accuracy", "top1_agreement", "max_abs_error")},
                         "correct_images_difference": round((a["accuracy"] - x["accuracy"]) * n),
                         "disagree_with_reference": {"arm64": round((1 - a["top1_agreement"]) * n),
                                                     "x86_64": round((1 - x["top1_agreement"]) * n)},
                         "runtime": f"{arm['report']['runtime']['runtime']} {arm['report']['runtime']['version']}",
                         "ran_on": arm["report"]["runtime"].get("delegate") or arm["report"]["runtime"].get("provider"),
                         "latency_ms_p50": {"arm64_emulated": arm["report"]["latency_ms"].get("p50"),
                                            "x86_64": x86["report"]["latency_ms"].get("p50")},
                         "peak_rss_mb": {"arm64_emulated": (arm["report"].get("memory") or {}).get("peak_rss_run_mb"),
                                         "x86_64": (x86["report"].get("memory") or {}).get("peak_rss_run_mb")}})
            print(rows[-1], flush=True)
    lines = ["| bundle | emulated CPU | arm64 accuracy | x86-64 accuracy | correct images, arm64 − x86-64 | top-1 ≠ reference "
             "(arm64 / x86-64) | max abs error arm64 / x86-64 | ran on |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, x = r["arm64"], r["x86_64"]
        extra = f" (+{', '.join(r['extra_features'])})" if r["extra_features"] else ""
        lines.append(f"| {r['bundle']} | {r['qemu_cpu']}{extra} | {a['accuracy']:.2%} | {x['accuracy']:.2%} | "
                     f"{r['correct_images_difference']:+d} of {r['n']} | {r['disagree_with_reference']['arm64']} / "
                     f"{r['disagree_with_reference']['x86_64']} | {a['max_abs_error']:.3g} / {x['max_abs_error']:.3g} | "
                     f"{r['ran_on']} |")
    note = (f"Emulator: {rows[0]['emulator']} through proot, Debian bookworm arm64 root, the runtimes' aarch64 wheels "
            f"(the host's versions), kept in $EDGEKIT_EMU_HOME. `edgekit emu setup` (root + 3 venvs): {setup_first:.0f} s this run "
            f"({'built' if 'debootstrap' in first.stderr else 'already cached'}), {setup_second:.1f} s a second time. "
            "'+features' are the emulated CPU's SIMD/matrix extensions the device lacks (QEMU's max has SME). "
            "Timings under emulation are in the JSON and say nothing about a device.")
    write_results("emu", "digits bundles: arm64 under QEMU vs x86-64", "\n".join(lines) + "\n\n" + note,
                  [*rows, {"setup_s": {"first": setup_first, "second": setup_second}}])
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""``python -m edgekit_runner BUNDLE``: run a bundle's eval set in its runtime, print a JSON report.

Exit codes: 0 ok, 2 the bundle cannot be used (INFRA_ERROR), 3 the runtime failed on the model (MODEL_ERROR).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgekit_runner import evaluate, runtimes
from edgekit_runner.report import INFRA_ERROR, MODEL_ERROR, OK, RunReport


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit_runner", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="bundle folder (holds manifest.json)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: runtime's choice)")
    ap.add_argument("--output", type=Path, default=None, help="also write the report to this file (atomically)")
    args = ap.parse_args(argv)

    report = run_bundle(args.bundle, args.runs, args.warmup, args.threads)
    text = report.to_json()
    if args.output:
        _write_atomic(args.output, text)
    print(text)
    return {OK: 0, INFRA_ERROR: 2, MODEL_ERROR: 3}[report.status]


def run_bundle(bundle: Path, runs: int = 50, warmup: int = 5, threads: int | None = None) -> RunReport:
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
        model_info = manifest["model"]
        data = np.load(bundle / manifest["eval"]["file"], allow_pickle=False)
        inputs, labels = data["inputs"], data["labels"]
    except (OSError, KeyError, ValueError) as e:
        return RunReport(INFRA_ERROR, {"path": str(bundle)}, error=f"cannot read bundle {bundle}: {e}")
    summary = {"path": str(bundle), "profile": manifest.get("profile", {}).get("id"),
               "format": model_info.get("format"), "backend": model_info.get("backend"),
               "model_sha256": manifest.get("files", {}).get(model_info["file"], {}).get("sha256")}
    try:
        model = runtimes.load(bundle / model_info["file"], model_info["runtime"], threads,
                              model_info.get("runtime_target"))
        outputs = evaluate.run_dataset(model, inputs)
        latency = evaluate.time_model(model, inputs[: evaluate.batch_size(model)], runs, warmup)
    except ImportError as e:
        return RunReport(INFRA_ERROR, summary, error=f"runtime {model_info['runtime']!r} is not installed: {e}")
    except Exception as e:  # the runtime refused the model: record it, the host interprets
        return RunReport(MODEL_ERROR, summary, error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
    pred = evaluate.top1(outputs[0])
    metrics = {"n_samples": int(len(inputs)), "accuracy": float((pred == labels).mean())}
    if "reference" in data.files:
        ref = data["reference"]
        metrics["top1_agreement"] = float((pred == evaluate.top1(ref)).mean())
        metrics["max_abs_error"] = float(np.abs(outputs[0].reshape(ref.shape) - ref).max())
    return RunReport(OK, summary, runtime=model.info, metrics=metrics, latency_ms=latency)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())

"""``edgekit build --validate-on emu``: the build stage that runs the staged bundle on the profile's arm64 CPU
under QEMU (:mod:`edgekit.emu`) before the bundle is written."""

from __future__ import annotations

import json
import shutil
from typing import Any


def arm64_stage(b: Any) -> None:
    """``--validate-on emu``: the staged bundle on the profile's arm64 CPU under QEMU (:mod:`edgekit.emu`), as
    ``edgekit bench --on emu:PROFILE`` runs it; recorded as ``validation.arm64`` (``where: arm64-emulation``).
    A quantized classifier whose arm64 accuracy falls more than the profile's budget below the fp32 reference
    fails the build."""
    from edgekit.bundle import MANIFEST, file_hashes
    from edgekit.errors import ValidationFailed
    from edgekit.transport import run_bundle
    from edgekit.transport.base import OK, Target

    target = Target("emu", profile=b.profile.id)
    b.say("arm64", f"on {target} (QEMU user-mode; the first run builds the cached root)")
    probe = b.work / "arm64-probe"
    shutil.copytree(b.staging, probe)
    (probe / MANIFEST).write_text(json.dumps(dict(b.manifest, files=file_hashes(probe)), default=str))
    outcome = run_bundle(probe, target, runs=3, warmup=1, retries=0, timeout=3600,
                         on_step=lambda m: b.say("arm64", m))
    if outcome.status != OK or outcome.report is None:
        raise ValidationFailed(f"the arm64 validation on {target} ended {outcome.status}: {outcome.error}")
    report = outcome.report
    em, met = report["device"]["emulation"], report.get("metrics") or {}
    record = {"where": "arm64-emulation", "target": str(target), "emulator": em["emulator"],
              "qemu_cpu": em["qemu_cpu"], "cpu_features": em["cpu_features"],
              "missing_features": em["missing_features"], "extra_features": em["extra_features"],
              "runtime": report.get("runtime"), "fallback": report.get("fallback"),
              "metrics": {k: v for k, v in met.items() if isinstance(v, (int, float, str)) or v is None}}
    v = b.validation
    metric = v.metric if v is not None else None
    if metric and isinstance(met.get(metric), (int, float)) and v is not None:
        record.update(metric=metric, value=met[metric], host_value=v.value)
        reference = (b.manifest.get("validation") or {}).get("reference_value")
        drop = b.plan.max_accuracy_drop
        if b.quantized is not None and drop is not None and reference is not None:
            record["accuracy_drop"] = round((reference - met[metric]) * 100, 4)
            if record["accuracy_drop"] > drop:
                raise ValidationFailed(
                    f"on arm64 ({em['emulator']}, -cpu {em['qemu_cpu']}) the bundle's {metric} is "
                    f"{met[metric]:.2%}, {record['accuracy_drop']:.2f} points below the fp32 reference "
                    f"{reference:.2%}; the profile allows {drop:g} (on this host: {v.value:.2%}); the bundle was not "
                    "written")
    b.manifest.setdefault("validation", {})["arm64"] = record

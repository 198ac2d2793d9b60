"""The build: load [-> distill] -> export -> validate [-> quantize -> validate] -> bundle.

When the project declares a teacher (and ``distill`` is not turned off), the distill stage trains
a fresh student from it with the project's ``[distill]`` settings, and that student is what gets
exported, quantized and validated; with ``--quant int8-qat`` the QAT fine-tuning then uses the KD
loss against the float teacher (quantization-aware distillation). The fp32 export is always built
and validated against PyTorch (it is the baseline a quantized artifact is compared with).

>>> # from edgekit.pipeline import build
>>> # result = build(load_profile("pixel8"), load_project("."), plan, Path("build/pixel8"))
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit import signals
from edgekit.bundle import SCHEMA_VERSION, BundleWriter
from edgekit.errors import ProjectError
from edgekit.export import EXPORTERS
from edgekit.export.base import subdir
from edgekit.fsutil import remove_if_owner_dead
from edgekit.plan import Plan
from edgekit.profiles import DeviceProfile
from edgekit.project import ProjectSpec, load_data, load_model, model_outputs
from edgekit.quantize.schemes import Int8QAT, Mixed, scheme_from_dict
from edgekit.train import LossFn, cross_entropy, pt2e_qat_trainer
from edgekit.validate import ValidationResult, validate

VERSIONED = ("torch", "executorch", "torchao", "onnx", "onnxscript", "onnxruntime", "litert-torch",
             "ai-edge-litert", "numpy")

StageCallback = Callable[[str, str], None]
WORK_PREFIX = "edgekit-work-"  # + pid: the build's scratch folder in the temp directory
LOG_PREFIX = "edgekit-build-"  # + pid: the CLI's log of library output (edgekit.cli)


@dataclass
class BuildResult:
    bundle: Path
    plan: Plan
    manifest: dict[str, Any]
    validation: ValidationResult
    timings_s: dict[str, float] = field(default_factory=dict)
    baseline: ValidationResult | None = None  # the fp32 artifact's, when the bundle is quantized
    warnings: list[str] = field(default_factory=list)
    sensitivity: Any = None  # edgekit.quantize.sensitivity.MixedReport for --quant mixed


def tool_versions() -> dict[str, str]:
    versions = {"edgekit": edgekit.__version__, "python": platform.python_version()}
    for dist in VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def remove_dead_temp() -> None:
    """Remove scratch folders and logs that builds killed outright (SIGKILL, power loss) left in the temp dir."""
    tmp = Path(tempfile.gettempdir())
    remove_if_owner_dead([*tmp.glob(f"{WORK_PREFIX}*"), *tmp.glob(f"{LOG_PREFIX}*.log")],
                         lambda name: name.split("-")[2])


def build(profile: DeviceProfile, project: ProjectSpec, plan: Plan, out: Path, force: bool = False,
          on_stage: StageCallback = lambda stage, detail: None) -> BuildResult:
    """Run the plan and write the bundle to ``out`` atomically. Raises EdgekitError subclasses.
    The distill stage runs when the plan has it (a project with a teacher, without --no-distill)."""
    import torch

    timings: dict[str, float] = {}
    current: list[Any] = []  # [stage name, start time] of the running stage

    def stage(name: str, detail: str) -> None:
        """Start stage ``name``; calling it again with the same name only updates the detail."""
        signals.checkpoint()  # an interrupt swallowed where it landed (a GC callback) stops the build here
        now = time.perf_counter()
        if current and current[0] == name:
            on_stage(name, detail)
            return
        if current:
            timings[current[0]] = round(now - current[1], 3)
        current[:] = [name, now]
        on_stage(name, detail)

    exporter = EXPORTERS[plan.format]
    inp = project.inputs[0]
    remove_dead_temp()
    with BundleWriter(out, force) as writer, \
            tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-") as work:
        stage("load", f"data and model of project {project.name!r}")
        torch.manual_seed(project.seed)
        splits = load_data(project)
        model = load_model(project)
        ev = splits["eval"]
        reference = reference_outputs(model, splits, project)  # checks the model entry before any training
        teacher, distilled, warnings = None, None, []
        if plan.distill:
            from edgekit.distill.project import distill_for_build

            stage("distill", f"teacher {project.teacher.entry}")
            model, teacher, distilled = distill_for_build(project, splits, model, lambda msg: stage("distill", msg))
            if distilled["student_accuracy"] < distilled["original_student_accuracy"]:
                n = len(splits["eval"].y)
                wrong = [round((1 - distilled[k]) * n) for k in ("student_accuracy", "original_student_accuracy")]
                warnings.append(f"the distilled student ({distilled['student_accuracy']:.2%}, {wrong[0]} of {n} wrong) "
                                f"is less accurate than the project's model entry "
                                f"({distilled['original_student_accuracy']:.2%}, {wrong[1]} wrong) on the eval split; "
                                "build with --no-distill to ship the model entry's network")
        if plan.quant_scheme and plan.quant_scheme.get("float_layers"):
            from edgekit.quantize.sensitivity import check_layer_names

            check_layer_names(model, tuple(plan.quant_scheme["float_layers"]))
        if plan.distill:
            reference = reference_outputs(model, splits, project)
        output_names = _output_names(project, len(reference))
        example = (torch.from_numpy(ev.x[: inp.shape[0]]).clone(memory_format=torch.contiguous_format),)

        stage("export", f"{plan.format}/{plan.backend} fp32")
        names = {"input_names": [inp.name], "output_names": output_names}
        fp32 = exporter.export(model, example, plan.backend, subdir(work, "fp32"), **names)

        def check(result: Any, atol: float | None, drop: float | None) -> ValidationResult:
            on_host = plan.validation == "target-runtime"
            v = validate(result.model_path if on_host else result.twin_path, plan.runtime, ev.x, ev.y, reference,
                         output_names, atol, plan.validation, target=plan.runtime_target if on_host else None,
                         max_accuracy_drop=drop)
            v.raise_if_failed()
            return v

        stage("validate", "fp32 against PyTorch " + ("in the target runtime" if plan.validation == "target-runtime"
                                                     else "on the host twin"))
        fp32_validation = check(fp32, exporter.atol["fp32"], None)
        result, validation, sensitivity = fp32, fp32_validation, None
        if plan.quant_scheme:
            scheme = scheme_from_dict(plan.quant_scheme)
            calib, fine_tune = splits["calib"].x, None
            if isinstance(scheme, Mixed):
                from edgekit.quantize.sensitivity import analyze

                stage("analyze", "per-layer int8 sensitivity on the eval split")
                sensitivity = analyze(model, example, calib[: scheme.calib_samples], ev.x, ev.y,
                                      plan.max_accuracy_drop, scheme.per_channel, scheme.float_layers or None,
                                      progress=lambda msg: stage("analyze", msg))
                scheme = dataclasses.replace(scheme, float_layers=tuple(sensitivity.float_layers))
            if isinstance(scheme, Int8QAT):
                loss_name, loss_fn = _qat_loss(teacher, distilled)
                fine_tune = pt2e_qat_trainer(scheme, splits["train"].x, splits["train"].y, project.seed, loss_fn,
                                             lambda e, n, loss: stage("qat", f"epoch {e}/{n}, loss {loss:.4f}"))
                stage("qat", f"{scheme.epochs} epochs on {len(splits['train'].x)} train samples, {loss_name} loss")
            else:
                if len(calib) < scheme.calib_samples:
                    warnings.append(f"calibration split has {len(calib)} samples, fewer than the "
                                    f"{scheme.calib_samples} requested; used {len(calib)}")
                used = min(len(calib), scheme.calib_samples)
                stage("quantize", f"{plan.quant} with the backend's own quantizer"
                                  + (f", {used} calibration samples" if used else ", no calibration"))
            result = exporter.export(model, example, plan.backend, subdir(work, "quant"), **names,
                                     quant=scheme, calib=calib, fine_tune=fine_tune)
            if sensitivity is not None:
                result.details["quantization"]["sensitivity"] = sensitivity.to_dict()
            if isinstance(scheme, Int8QAT):
                result.details["quantization"]["loss"] = loss_name
                if loss_name == "hinton-kd":
                    result.details["quantization"]["kd"] = {"teacher": project.teacher.entry, **distilled["loss"]}
            stage("validate-quantized", f"{plan.quant} against PyTorch fp32")
            validation = check(result, None, plan.max_accuracy_drop)

        stage("bundle", str(out))
        staging = writer.staging
        model_file = f"model{exporter.extension}"
        shutil.copy2(result.model_path, staging / model_file)
        np.savez(staging / "eval.npz", inputs=ev.x, labels=ev.y, reference=reference[0])
        _copy_runner(staging / "edgekit_runner")
        manifest = _manifest(profile, project, plan, staging / model_file, output_names, reference, ev,
                             result, validation, None if result is fp32 else (fp32, fp32_validation), warnings,
                             distilled)
        stage("done", "")
        manifest["timings_s"] = timings
        bundle = writer.commit(manifest)
    return BuildResult(bundle, plan, manifest, validation, timings,
                       None if result is fp32 else fp32_validation, warnings, sensitivity)


def _manifest(profile: DeviceProfile, project: ProjectSpec, plan: Plan, model_path: Path, output_names: list[str],
              reference: list[np.ndarray], ev: Any, result: Any, validation: ValidationResult,
              baseline: tuple[Any, ValidationResult] | None, warnings: list[str],
              distilled: dict[str, Any] | None) -> dict[str, Any]:
    """What the bundle says about itself (file hashes are added when it is committed)."""
    inp = project.inputs[0]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "edgekit-bundle",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": {"id": profile.id, "name": profile.name, "soc": profile.soc,
                    "schema_version": profile.schema_version, "budgets": profile.budgets.model_dump()},
        "project": {"name": project.name, "task": project.task.kind, "metric": project.task.metric,
                    "model_entry": project.model.entry},
        "plan": plan.model_dump(),
        "model": {
            "file": model_path.name, "format": plan.format, "backend": plan.backend,
            "runtime": plan.runtime, "runtime_target": plan.runtime_target, "precision": plan.precision,
            "bytes": model_path.stat().st_size,
            "inputs": [{"name": inp.name, "shape": list(inp.shape), "dtype": inp.dtype}],
            "outputs": [{"name": n, "shape": [inp.shape[0], *r.shape[1:]], "dtype": str(r.dtype)}
                        for n, r in zip(output_names, reference)],
            "export_details": result.details,
        },
        "eval": {"file": "eval.npz", "n_samples": len(ev.x),
                 "arrays": {"inputs": list(ev.x.shape), "labels": list(ev.y.shape),
                            "reference": list(reference[0].shape)}},
        "runner": {"package": "edgekit_runner", "command": "python -m edgekit_runner ."},
        "distill": distilled,
        "validation": validation.to_dict(),
        "baseline": None if baseline is None else {
            "precision": "fp32", "bytes": baseline[0].model_path.stat().st_size,
            "validation": baseline[1].to_dict()},
        "warnings": warnings,
        "versions": tool_versions(),
        "seed": project.seed,
    }


def _qat_loss(teacher: Any, distilled: dict[str, Any] | None) -> tuple[str, LossFn]:
    """QAT's loss: the Hinton KD loss against the float teacher when the distill stage ran with it
    (quantization-aware distillation), else cross-entropy on the labels."""
    if distilled is None or distilled["loss"]["name"] != "hinton":
        return "cross-entropy", cross_entropy
    from edgekit.distill.losses import kd_loss_fn

    return "hinton-kd", kd_loss_fn(teacher, distilled["loss"])


def reference_outputs(model: Any, splits: dict[str, Any], project: ProjectSpec) -> list[np.ndarray]:
    """The PyTorch model's outputs on the eval split: the reference every export is compared with (checked
    by :func:`edgekit.project.model_outputs`; for a classifier, one score per class that every split's
    labels can index)."""
    arrays = model_outputs(model, splits["eval"].x, f"the model ({project.model.entry})")
    classes = int(np.prod(arrays[0].shape[1:]))
    for name, split in splits.items():
        if project.task.kind == "classification" and split.y.size and split.y.max() >= classes:
            raise ProjectError(f"label {int(split.y.max())} in the {name} split, but the model "
                               f"({project.model.entry}) scores {classes} classes")
    return arrays


def _output_names(project: ProjectSpec, n: int) -> list[str]:
    names = list(project.outputs)
    return names[:n] + [f"output_{i}" for i in range(len(names), n)]


def _copy_runner(dest: Path) -> None:
    import edgekit_runner

    shutil.copytree(Path(edgekit_runner.__file__).parent, dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

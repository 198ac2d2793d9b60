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
from edgekit_runner.manifest import INPUT, REFERENCE, MethodSpec, TensorSpec

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
    classifier = project.task.kind == "classification"
    input_names = [i.name for i in project.inputs]
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

            stage("distill", f"teacher {project.teacher.source}")
            model, teacher, distilled = distill_for_build(project, splits, model, lambda msg: stage("distill", msg))
            if "student_accuracy" in distilled and \
                    distilled["student_accuracy"] < distilled["original_student_accuracy"]:
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
        eval_inputs = ev.named(project)
        batch = project.inputs[0].shape[0]
        example = tuple(torch.from_numpy(eval_inputs[n][:batch]).clone(memory_format=torch.contiguous_format)
                        for n in input_names)

        stage("export", f"{plan.format}/{plan.backend} fp32")
        names = {"input_names": input_names, "output_names": output_names}
        fp32 = exporter.export(model, example, plan.backend, subdir(work, "fp32"), **names)

        def check(result: Any, atol: float | None, drop: float | None) -> ValidationResult:
            on_host = plan.validation == "target-runtime"
            v = validate(result.model_path if on_host else result.twin_path, plan.runtime, eval_inputs, ev.y,
                         reference, output_names, atol, plan.validation,
                         target=plan.runtime_target if on_host else None,
                         max_accuracy_drop=drop if classifier else None,
                         task=project.task.kind, task_options=project.task.options(),
                         quantized=result is not fp32 and plan.precision.startswith("int"))
            v.raise_if_failed()
            return v

        stage("validate", "fp32 against PyTorch " + ("in the target runtime" if plan.validation == "target-runtime"
                                                     else "on the host twin"))
        fp32_validation = check(fp32, exporter.atol["fp32"], None)
        result, validation, sensitivity = fp32, fp32_validation, None
        if plan.quant_scheme:
            scheme = scheme_from_dict(plan.quant_scheme)
            calib = splits["calib"].x if len(input_names) == 1 else splits["calib"].named(project)
            fine_tune = None
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
                n_calib = len(splits["calib"].x)
                if n_calib < scheme.calib_samples:
                    warnings.append(f"calibration split has {n_calib} samples, fewer than the "
                                    f"{scheme.calib_samples} requested; used {n_calib}")
                used = min(n_calib, scheme.calib_samples)
                stage("quantize", f"{plan.quant} with the backend's own quantizer"
                                  + (f", {used} calibration samples" if used else ", no calibration"))
            result = exporter.export(model, example, plan.backend, subdir(work, "quant"), **names,
                                     quant=scheme, calib=calib, fine_tune=fine_tune)
            if sensitivity is not None:
                result.details["quantization"]["sensitivity"] = sensitivity.to_dict()
            if isinstance(scheme, Int8QAT):
                result.details["quantization"]["loss"] = loss_name
                if loss_name == "hinton-kd":
                    result.details["quantization"]["kd"] = {"teacher": project.teacher.source, **distilled["loss"]}
            stage("validate-quantized", f"{plan.quant} against PyTorch fp32")
            validation = check(result, None, plan.max_accuracy_drop)

        stage("bundle", str(out))
        staging = writer.staging
        model_file = f"model{exporter.extension}"
        shutil.copy2(result.model_path, staging / model_file)
        dtypes = artifact_dtypes(project, validation)
        arrays = {**{INPUT + n: a.astype(dtypes[n], copy=False) for n, a in eval_inputs.items()},
                  **({"labels": ev.y} if ev.y is not None else {}),
                  **{REFERENCE + n: r for n, r in zip(output_names, reference)}}
        np.savez(staging / "eval.npz", **arrays)
        tokenizer = _copy_tokenizer(project, staging)
        _copy_runner(staging / "edgekit_runner")
        manifest = _manifest(profile, project, plan, staging / model_file, output_names, reference, arrays,
                             result, validation, None if result is fp32 else (fp32, fp32_validation), warnings,
                             distilled, tokenizer)
        stage("done", "")
        manifest["timings_s"] = timings
        from edgekit.bundle_readme import write_readme

        write_readme(staging, manifest)
        bundle = writer.commit(manifest)
    return BuildResult(bundle, plan, manifest, validation, timings,
                       None if result is fp32 else fp32_validation, warnings, sensitivity)


def _manifest(profile: DeviceProfile, project: ProjectSpec, plan: Plan, model_path: Path, output_names: list[str],
              reference: list[np.ndarray], arrays: dict[str, np.ndarray], result: Any, validation: ValidationResult,
              baseline: tuple[Any, ValidationResult] | None, warnings: list[str],
              distilled: dict[str, Any] | None, tokenizer: dict[str, Any] | None) -> dict[str, Any]:
    """What the bundle says about itself (schema 2; file hashes are added when it is committed)."""
    batch = project.inputs[0].shape[0]
    dtypes = artifact_dtypes(project, validation)
    forward = MethodSpec("forward", tuple(TensorSpec(i.name, dtypes[i.name], tuple(i.shape)) for i in project.inputs),
                         tuple(TensorSpec(n, str(r.dtype), (batch, *r.shape[1:]))
                               for n, r in zip(output_names, reference)))
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "edgekit-bundle",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": {"id": profile.id, "name": profile.name, "soc": profile.soc,
                    "schema_version": profile.schema_version, "budgets": profile.budgets.model_dump()},
        "project": {"name": project.name, "model_entry": project.model.source},
        "task": project.task.options(),
        "plan": plan.model_dump(),
        "model": {
            "file": model_path.name, "format": plan.format, "backend": plan.backend,
            "runtime": plan.runtime, "runtime_target": plan.runtime_target, "precision": plan.precision,
            "bytes": model_path.stat().st_size, "export_details": result.details,
        },
        "methods": [forward.to_dict()],
        "eval": {"file": "eval.npz", "n_samples": len(reference[0]),
                 "arrays": {k: list(a.shape) for k, a in arrays.items()}},
        "tokenizer": tokenizer,
        "readme": "README.md",
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


def artifact_dtypes(project: ProjectSpec, validation: ValidationResult) -> dict[str, str]:
    """Each input's dtype as the artifact takes it: the declared one, except where the runtime narrowed an
    integer input (LiteRT converts int64 ids to int32), so that an app feeding the contract's dtype works."""
    runtime = validation.runtime_io.get("inputs", [])
    dtypes = {i.name: i.dtype for i in project.inputs}
    if len(runtime) == len(project.inputs):
        for inp, rt in zip(project.inputs, runtime):
            if np.dtype(inp.dtype).kind in "iu" and np.dtype(rt["dtype"]).kind in "iu" and rt["dtype"] != inp.dtype:
                dtypes[inp.name] = rt["dtype"]
    return dtypes


def _copy_tokenizer(project: ProjectSpec, staging: Path) -> dict[str, Any] | None:
    """The project's tokenizer, into the bundle: an app tokenizes exactly as the host did."""
    if project.model.hf is None:
        return None
    from edgekit import hf

    folder = hf.resolve(project.root, project.model.hf)
    shutil.copy2(folder / hf.TOKENIZER, staging / hf.TOKENIZER)
    length = project.inputs[0].shape[1] if len(project.inputs[0].shape) == 2 else None
    return {"file": hf.TOKENIZER, "kind": "huggingface-tokenizers", "max_length": length,
            "inputs": [i.name for i in project.inputs], "padding": "to max_length", "truncation": True}


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
    eval_inputs = splits["eval"].named(project)
    arrays = model_outputs(model, [eval_inputs[i.name] for i in project.inputs], f"the model ({project.model.source})")
    classes = int(np.prod(arrays[0].shape[1:]))
    for name, split in splits.items():
        if project.task.kind == "classification" and split.y.size and split.y.max() >= classes:
            raise ProjectError(f"label {int(split.y.max())} in the {name} split, but the model "
                               f"({project.model.source}) scores {classes} classes")
    return arrays


def _output_names(project: ProjectSpec, n: int) -> list[str]:
    names = list(project.outputs)
    return names[:n] + [f"output_{i}" for i in range(len(names), n)]


def _copy_runner(dest: Path) -> None:
    import edgekit_runner

    shutil.copytree(Path(edgekit_runner.__file__).parent, dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

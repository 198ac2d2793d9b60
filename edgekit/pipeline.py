"""The build: load [-> distill] [-> prune] -> export -> validate [-> analyze] [-> quantize | qat -> validate] -> bundle.

The plan's ``stages`` is the list that runs: each stage is a plain function of a :class:`Build` record
(:data:`STAGES`), reading the typed artifacts earlier stages left there and adding its own.

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
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgekit_runner.manifest import INPUT, REFERENCE

from edgekit import signals
from edgekit.bundle import BundleWriter
from edgekit.bundle_manifest import artifact_dtypes, compose_manifest, copy_runner
from edgekit.emu_stage import arm64_stage
from edgekit.errors import ProjectError, ValidationFailed
from edgekit.export import EXPORTERS
from edgekit.export.base import ExportResult, subdir
from edgekit.fsutil import remove_if_owner_dead
from edgekit.plan import Plan
from edgekit.profiles import DeviceProfile
from edgekit.project import ProjectSpec, load_data, load_model, model_outputs
from edgekit.quantize.schemes import scheme_from_dict
from edgekit.train import LossFn, cross_entropy, pt2e_qat_trainer
from edgekit.validate import ValidationResult, validate

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
    budgets: list[Any] = field(default_factory=list)  # edgekit.budgets.Check, one per budget of the plan


def remove_dead_temp() -> None:
    """Remove scratch folders and logs that builds killed outright (SIGKILL, power loss) left in the temp dir."""
    tmp = Path(tempfile.gettempdir())
    remove_if_owner_dead([*tmp.glob(f"{WORK_PREFIX}*"), *tmp.glob(f"{LOG_PREFIX}*.log")],
                         lambda name: name.split("-")[2])


@dataclass
class Build:
    """What the stages pass on: each stage is a plain function of this record that reads what earlier
    stages made and adds its own typed artifacts (the PyTorch model, the reference outputs, the exports and
    their validations, the manifest). ``say(stage, detail)`` reports progress."""

    profile: DeviceProfile
    project: ProjectSpec
    plan: Plan
    out: Path
    work: Path
    staging: Path
    say: StageCallback
    splits: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # the network that is exported (the distilled student once the distill stage ran)
    reference: list[np.ndarray] = field(default_factory=list)  # its outputs on the eval split
    teacher: Any = None
    distilled: dict[str, Any] | None = None  # the manifest's record of the distill stage
    pruned: dict[str, Any] | None = None  # the manifest's record of the prune stage
    scheme: Any = None  # the quantization scheme, as the analyze stage settles it
    fine_tune: Any = None  # QAT's training loop, for the quantize stage
    fp32: ExportResult | None = None
    fp32_validation: ValidationResult | None = None
    quantized: ExportResult | None = None
    validation: ValidationResult | None = None  # of the artifact that ships
    sensitivity: Any = None
    manifest: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    language_model: dict[str, Any] | None = None  # a language model's reference and settings (edgekit.lm.build)
    qnn: dict[str, Any] | None = None  # the compile stage's record: chip, context binary, placement
    cpu_validation: ValidationResult | None = None  # the shipped artifact on the CPU EP, beside the emulator's

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.project.inputs]

    @property
    def output_names(self) -> list[str]:
        return _output_names(self.project, len(self.reference))

    @property
    def eval_inputs(self) -> dict[str, np.ndarray]:
        return self.splits["eval"].named(self.project)

    @property
    def example(self) -> tuple[Any, ...]:
        import torch

        batch = self.project.inputs[0].shape[0]
        return tuple(torch.from_numpy(self.eval_inputs[n][:batch]).clone(memory_format=torch.contiguous_format)
                     for n in self.input_names)

    @property
    def result(self) -> ExportResult:
        """The artifact that ships: the quantized one when there is one."""
        return self.quantized or self.fp32

    def export(self, name: str, **quant: Any) -> ExportResult:
        return EXPORTERS[self.plan.format].export(self.model, self.example, self.plan.backend, subdir(self.work, name),
                                                  input_names=self.input_names, output_names=self.output_names,
                                                  **quant)


def load_stage(b: Build) -> None:
    """The project's data and model, and the model's outputs on eval (which checks the model entry early)."""
    import torch

    b.say("load", f"data and model of project {b.project.name!r}")
    torch.manual_seed(b.project.seed)
    b.splits = load_data(b.project)
    b.model = load_model(b.project)
    b.reference = reference_outputs(b.model, b.splits, b.project)


def distill_stage(b: Build) -> None:
    """A student trained from the project's teacher with its [distill] settings; it replaces the model when it
    is the better of the two on the calib split (:mod:`edgekit.selection`)."""
    from edgekit.distill.project import distill_for_build
    from edgekit.selection import choose_shipped

    b.say("distill", f"teacher {b.project.teacher.source}")
    student, b.teacher, b.distilled = distill_for_build(b.project, b.splits, b.model,
                                                        lambda msg: b.say("distill", msg))
    if choose_shipped(b, student):
        b.reference = reference_outputs(b.model, b.splits, b.project)


def prune_stage(b: Build) -> None:
    """--prune: the model pruned (edgekit.prune), recovered by KD from its unpruned self, masks made permanent."""
    from edgekit.prune import PruneSpec, prune_for_build

    spec = PruneSpec.from_plan(b.plan.prune)
    settings = b.project.distill
    b.say("prune", spec.label)
    b.model, b.pruned = prune_for_build(b.model, b.example, b.splits, spec,
                                        settings.temperature if settings else 4.0, settings.alpha if settings else 0.9,
                                        b.project.seed, lambda msg: b.say("prune", msg),
                                        _latency_probe(b) if spec.target == "latency" else None)
    b.reference = reference_outputs(b.model, b.splits, b.project)


def _latency_probe(b: Build) -> Callable[[Any], float]:
    """``structured:latency=R``: a network's median latency (ms, batch 1) as an fp32 export of the plan's format, in
    its runtime on this host (one thread, about half a second of runs)."""
    from edgekit_runner import evaluate, runtimes

    count = [0]

    def latency(model: Any) -> float:
        count[0] += 1
        b.say("prune", f"latency of candidate {count[0]} in {b.plan.runtime}")
        fmt = EXPORTERS[b.plan.format]
        result = fmt.export(model, b.example, b.plan.backend, subdir(b.work, f"prune-latency-{count[0]}"),
                            input_names=b.input_names, output_names=b.output_names)
        loaded = runtimes.load(result.model_path, b.plan.runtime, threads=1)
        sample = [a.numpy() for a in b.example]
        probe = evaluate.time_model(loaded, sample, runs=5, warmup=3)["median"]
        runs = max(20, min(2000, int(500 / max(probe, 1e-3))))
        ms = evaluate.time_model(loaded, sample, runs=runs, warmup=5)["median"]
        shutil.rmtree(result.model_path.parent, ignore_errors=True)
        return ms

    return latency


def export_stage(b: Build) -> None:
    """The fp32 artifact: always built, the baseline a quantized one is compared with."""
    if b.plan.quant_scheme and b.plan.quant_scheme.get("float_layers"):
        from edgekit.quantize.sensitivity import check_layer_names

        check_layer_names(b.model, tuple(b.plan.quant_scheme["float_layers"]))
    b.say("export", f"{b.plan.format}/{b.plan.backend} fp32")
    b.fp32 = b.export("fp32")


def validate_stage(b: Build) -> None:
    """The newest artifact against the PyTorch reference, in the target runtime or on the host twin; a
    failure stops the build (ValidationFailed)."""
    plan, on_host = b.plan, b.plan.validation == "target-runtime"
    quantized = b.quantized is not None
    if quantized:
        b.say("validate-quantized", f"{plan.quant} against PyTorch fp32")
    else:
        b.say("validate", "fp32 against PyTorch " + ("in the target runtime" if on_host else "on the host twin"))
    artifact = b.result
    v = validate(artifact.model_path if on_host else artifact.twin_path, plan.runtime, b.eval_inputs,
                 b.splits["eval"].y, b.reference, b.output_names,
                 None if quantized else EXPORTERS[plan.format].atol["fp32"], plan.validation,
                 target=plan.runtime_target if on_host else None,
                 max_accuracy_drop=plan.max_accuracy_drop if quantized and b.project.task.kind == "classification"
                 else None, task=b.project.task.kind, task_options=b.project.task.options(),
                 quantized=quantized and plan.precision.startswith("int"))
    v.raise_if_failed()
    b.validation = v
    if not quantized:
        b.fp32_validation = v


def _calib(b: Build) -> Any:
    return b.splits["calib"].x if len(b.input_names) == 1 else b.splits["calib"].named(b.project)


def analyze_stage(b: Build) -> None:
    """Mixed precision: the per-layer int8 sensitivity picks the layers kept in float."""
    from edgekit.quantize.sensitivity import analyze

    scheme = scheme_from_dict(b.plan.quant_scheme)
    ev = b.splits["eval"]
    b.say("analyze", "per-layer int8 sensitivity on the eval split")
    b.sensitivity = analyze(b.model, b.example, _calib(b)[: scheme.calib_samples], ev.x, ev.y,
                            b.plan.max_accuracy_drop, scheme.per_channel, scheme.float_layers or None,
                            progress=lambda msg: b.say("analyze", msg))
    b.scheme = dataclasses.replace(scheme, float_layers=tuple(b.sensitivity.float_layers))


def quantize_stage(b: Build) -> None:
    """Post-training quantization with the backend's own quantizer (and calibration where it needs one)."""
    scheme = b.scheme or scheme_from_dict(b.plan.quant_scheme)
    n_calib = len(b.splits["calib"].x)
    if n_calib < scheme.calib_samples:
        b.warnings.append(f"calibration split has {n_calib} samples, fewer than the {scheme.calib_samples} "
                          f"requested; used {n_calib}")
    used = min(n_calib, scheme.calib_samples)
    b.say("quantize", f"{b.plan.quant} with the backend's own quantizer"
                      + (f", {used} calibration samples" if used else ", no calibration"))
    b.quantized = b.export("quant", quant=scheme, calib=_calib(b))
    if b.sensitivity is not None:
        b.quantized.details["quantization"]["sensitivity"] = b.sensitivity.to_dict()


def qat_stage(b: Build) -> None:
    """Quantization-aware fine-tuning (with the KD loss against the teacher when the distill stage ran)."""
    scheme = scheme_from_dict(b.plan.quant_scheme)
    train = b.splits["train"]
    loss_name, loss_fn = _qat_loss(b.teacher, b.distilled)
    fine_tune = pt2e_qat_trainer(scheme, train.x, train.y, b.project.seed, loss_fn,
                                 lambda e, n, loss: b.say("qat", f"epoch {e}/{n}, loss {loss:.4f}"))
    b.say("qat", f"{scheme.epochs} epochs on {len(train.x)} train samples, {loss_name} loss")
    b.quantized = b.export("quant", quant=scheme, calib=_calib(b), fine_tune=fine_tune)
    details = b.quantized.details["quantization"]
    details["loss"] = loss_name
    if loss_name == "hinton-kd":
        details["kd"] = {"teacher": b.project.teacher.source, **b.distilled["loss"]}


EMULATOR_SECONDS = 60.0  # the HTP emulator's share of a build: the eval samples it runs are cut to fit (recorded)


def compile_stage(b: Build) -> None:
    """The qnn paths: the artifact compiled ahead of time for the profile's Snapdragon, every node/op checked to be
    on the HTP, and validated on Qualcomm's HTP emulator against PyTorch and against the same model on the CPU.

    - onnx/qnn: an EPContext model + QNN context binary (ONNX Runtime's compile API); the emulator runs it.
    - tflite/qnn: LiteRT's ahead-of-time compilation (``model_npu.tflite``); LiteRT cannot run it on x86-64, so
      the QNN context inside it, wrapped in an ONNX EPContext node, runs on the emulator instead.

    Without ``onnxruntime-qnn`` the bundle is validated on the CPU only, and says so."""
    from edgekit import qnn
    from edgekit_runner import evaluate, runtimes

    chip = b.plan.qnn
    label = f"{chip['chip']} (HTP v{chip['htp_arch']})"
    litert = b.plan.format == "tflite"
    cpu_name = "LiteRT CPU" if litert else "onnxruntime CPU EP"
    if not chip["emulator"] or not qnn.available():
        b.warnings.append(f"NOT compiled for {label} and NOT validated on its NPU: the QNN HTP emulator is not "
                          f"installed ({qnn.INSTALL}); validated on the {cpu_name} only, and the phone compiles the "
                          "model at first load")
        b.qnn = {**chip, "compiled": None, "validated_on": f"{cpu_name} only"}
        return
    model = b.result.model_path
    options = {"soc_model": chip["soc_model"], "htp_arch": chip["htp_arch"]}
    if litert:
        b.say("compile", f"LiteRT's ahead-of-time compilation for the NPU of {label}")
        compiled, placed = qnn.compile_tflite(model, chip["chip"], chip["htp_arch"])
        run_path = model.parent / "model_npu_context.onnx"  # the emulator's view of it; not shipped
        compiled["context"] = qnn.tflite_context_as_onnx(model.parent / compiled["file"], run_path)
    else:
        b.say("compile", f"QNN context binary for {label}")
        placed = qnn.placement(model, chip["soc_model"], chip["htp_arch"], chip["chip"])
        compiled = qnn.compile_context(model, chip["soc_model"], chip["htp_arch"])
        options["compiled"] = {"file": compiled["file"]}
        run_path = model
    inputs, n = b.eval_inputs, len(b.reference[0])
    loaded = runtimes.load(run_path, "onnxruntime", target=qnn.QNN, options=options)
    sample = evaluate.as_input_list(loaded, inputs)
    t0 = time.perf_counter()
    loaded.run([a[: evaluate.batch_size(loaded)] for a in sample])
    per_call = time.perf_counter() - t0
    batch = evaluate.batch_size(loaded)
    k = n if per_call * n / batch <= EMULATOR_SECONDS else min(n, max(32, int(EMULATOR_SECONDS / per_call) * batch))
    b.say("validate-npu", f"{k} of {n} eval samples on the HTP emulator ({per_call * 1000:.0f} ms per call) "
                          f"against PyTorch and the {cpu_name}")
    subset = {name: a[:k] for name, a in inputs.items()}
    cpu = evaluate.run_dataset(runtimes.load(model, "litert" if litert else "onnxruntime"), subset)
    ev = b.splits["eval"]
    quantized = b.quantized is not None
    v = validate(run_path, "onnxruntime", subset, None if ev.y is None else ev.y[:k], [r[:k] for r in b.reference],
                 b.output_names, None, "htp-emulator", target=qnn.QNN, timing_runs=3,
                 max_accuracy_drop=b.plan.max_accuracy_drop if quantized and b.project.task.kind == "classification"
                 else None, task=b.project.task.kind, task_options=b.project.task.options(),
                 quantized=quantized and b.plan.precision.startswith("int"), target_options=options,
                 against={cpu_name: cpu})
    ran = v.runtime.get("qnn") or {}
    if v.runtime.get("model_file") != (compiled["file"] if not litert else run_path.name) or not ran.get("ran") \
            or ran.get("nodes_not_on_qnn"):
        raise ValidationFailed(f"the compiled model did not run on the HTP emulator as a whole: ran "
                               f"{v.runtime.get('model_file')} on {v.runtime.get('provider')}; off QNN: "
                               f"{', '.join(ran.get('nodes_not_on_qnn') or []) or 'none'}; {v.runtime.get('fallback')}")
    if litert:
        v.artifact = f"{compiled['file']} (its QNN context {compiled['context']['graph']!r}, in an ONNX EPContext node)"
    v.note = (f"{k} of {n} eval samples: the emulator ran {per_call * 1000:.1f} ms per call on this host, and "
              f"a build gives it about {EMULATOR_SECONDS:.0f} s" if k < n else f"all {n} eval samples")
    v.raise_if_failed()
    b.cpu_validation, b.validation = b.validation, v
    b.qnn = {**chip, "compiled": compiled, "placement": placed, "emulator_ms_per_call": round(per_call * 1000, 3),
             "validated_on": "htp-emulator", "eval_samples": k}


def bundle_stage(b: Build) -> None:
    """The model, eval set (named inputs, labels, reference outputs), tokenizer, runner, manifest and README
    into the staging folder; :class:`BundleWriter` then commits it atomically."""

    b.say("bundle", str(b.out))
    staging, result = b.staging, b.result
    model_file = f"model{EXPORTERS[b.plan.format].extension}"
    shutil.copy2(result.model_path, staging / model_file)
    dtypes = artifact_dtypes(b.project, b.validation)
    ev = b.splits["eval"]
    arrays = {**{INPUT + n: a.astype(dtypes[n], copy=False) for n, a in b.eval_inputs.items()},
              **({"labels": ev.y} if ev.y is not None else {}),
              **{REFERENCE + n: r for n, r in zip(b.output_names, b.reference)}}
    np.savez(staging / "eval.npz", **arrays)
    tokenizer = _copy_tokenizer(b.project, staging)
    if b.qnn and b.qnn.get("compiled"):  # the EPContext model and its context binary, beside the portable model
        for name in (b.qnn["compiled"]["file"], *b.qnn["compiled"]["binaries"]):
            shutil.copy2(result.model_path.parent / name, staging / name)
        result.details["qnn"] = {k: v for k, v in b.qnn.items() if k != "emulator"}
    elif b.qnn:
        result.details["qnn"] = {k: v for k, v in b.qnn.items() if k != "emulator"}
    copy_runner(staging / "edgekit_runner")
    b.manifest = compose_manifest(b.profile, b.project, b.plan, staging / model_file, b.output_names, b.reference, arrays,
                           result, b.validation, None if b.quantized is None else (b.fp32, b.fp32_validation),
                           b.warnings, b.distilled, tokenizer, b.pruned)
    if b.cpu_validation is not None:  # the shipped artifact on the CPU too (all eval samples)
        b.manifest["validation"]["cpu"] = b.cpu_validation.to_dict()


STAGES: dict[str, Callable[[Build], None]] = {
    "load": load_stage, "distill": distill_stage, "prune": prune_stage, "export": export_stage, "validate": validate_stage,
    "analyze": analyze_stage, "quantize": quantize_stage, "qat": qat_stage, "compile": compile_stage,
    "bundle": bundle_stage, "arm64": arm64_stage,  # --validate-on emu (edgekit.emu)
}


def build(profile: DeviceProfile, project: ProjectSpec, plan: Plan, out: Path, force: bool = False,
          on_stage: StageCallback = lambda stage, detail: None) -> BuildResult:
    """Run the plan's stages (``plan.stages``, each a function in :data:`STAGES`) and write the bundle to
    ``out`` atomically. Raises EdgekitError subclasses."""
    stages = STAGES
    if plan.task == "language-model":  # the same stages, done the language-model way
        from edgekit.lm.build import STAGES as stages
    unknown = [s for s in plan.stages if s not in stages]
    if unknown:
        raise ProjectError(f"the plan has stage {unknown[0]!r}, which this edgekit does not know")
    timings: dict[str, float] = {}
    current: list[Any] = []  # [stage name, start time] of the running stage

    def say(name: str, detail: str) -> None:
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

    remove_dead_temp()
    with BundleWriter(out, force) as writer, \
            tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{os.getpid()}-") as work:
        b = Build(profile, project, plan, out, Path(work), writer.staging, say)
        for name in plan.stages:
            stages[name](b)
        say("done", "")
        b.manifest["timings_s"] = timings
        checks = budget_checks(b)
        b.manifest["budgets"] = {"limits": dict(plan.budgets), "checks": [c.to_dict() for c in checks],
                                 "passed": not any(c.status == "fail" for c in checks)}
        from edgekit.bundle_readme import write_readme

        write_readme(writer.staging, b.manifest)
        bundle = writer.commit(b.manifest)
    return BuildResult(bundle, plan, b.manifest, b.validation, timings,
                       None if b.quantized is None else b.fp32_validation, b.warnings, b.sensitivity, checks)


def budget_checks(b: Build) -> list[Any]:
    """The plan's budgets against what the build measured (:func:`edgekit.budgets.for_build`)."""
    from edgekit.budgets import for_build

    return for_build(b.plan.budgets, b.plan.task, b.manifest["model"]["bytes"], b.validation, b.quantized is not None)


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

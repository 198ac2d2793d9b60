"""The plan: what a build will do, resolved from profile + project + CLI overrides.

Making a plan does no work and imports no runtime; it rejects an impossible
request (e.g. Core ML for a Jetson) with the combinations that would work.

>>> from edgekit.profiles import load_profile
>>> make_plan(load_profile("jetson-orin-nano"), fmt="onnx").backend
'tensorrt'
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from edgekit.errors import PlanError
from edgekit.export import EXPORTERS
from edgekit.profiles import DeviceProfile
from edgekit.quantize.schemes import SCHEMES

SCHEMA_VERSION = 1


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    device: str
    compute_unit: str
    format: str
    backend: str
    backend_description: str
    runtime: str
    runtime_target: str
    precision: str
    quant: str
    quant_scheme: dict | None = None
    profile_default_quant: str
    validation: Literal["target-runtime", "host-twin"]
    host_twin: str
    # fp32: every output within atol of PyTorch. Quantized: accuracy within the profile's budget.
    atol: float | None
    max_accuracy_drop: float | None = None
    distill: bool = False  # the project has a [teacher] and --no-distill was not given
    prune: dict | None = None  # --prune: edgekit.prune.PruneSpec as a dict
    budgets: dict[str, float] = {}  # the limits the build is checked against (edgekit.budgets): profile + --budget
    task: str = "classification"
    notes: tuple[str, ...] = ()  # what the planner chose on the user's behalf, and why
    # onnx/qnn: the profile's chip ({chip, soc_model, htp_arch}) and whether its HTP emulator is installed
    qnn: dict | None = None
    stages: tuple[str, ...]

    def describe_budgets(self) -> str:
        from edgekit.budgets import KEYS

        return ", ".join(f"{k} {'<=' if KEYS[k].upper else '>='} {v:g} {KEYS[k].unit}" for k, v in self.budgets.items()
                         if self.task in KEYS[k].tasks) or "none"

    def describe(self) -> list[tuple[str, str]]:
        """(label, value) rows for humans."""
        where = ("in its target runtime on this host" if self.validation == "target-runtime"
                 else f"host twin: {self.host_twin}")
        quant = self.quant if self.quant != "none" else "none (fp32)"
        if self.quant_scheme:
            quant += f" ({', '.join(f'{k}={v}' for k, v in self.quant_scheme.items() if k != 'scheme')})"
        check = (f"max abs error <= {self.atol:g}" if self.atol is not None else
                 f"accuracy within {self.max_accuracy_drop:g} points of fp32 (profile budget)"
                 if self.task == "classification" else f"the {self.task} task's thresholds (edgekit.toml [task])")
        return [
            ("device", f"{self.device} ({self.compute_unit})"),
            ("format / backend", f"{self.format} / {self.backend}: {self.backend_description}"),
            ("precision", self.precision),
            ("quantization", f"{quant}; profile recommends {self.profile_default_quant}"),
            ("validation", f"{where}, {check}"),
            *((("NPU", f"compiled for {self.qnn['chip']} (HTP v{self.qnn['htp_arch']}) and validated on Qualcomm's "
                       "HTP emulator" if self.qnn["emulator"] else
                       f"NOT compiled or validated for {self.qnn['chip']}: the QNN HTP emulator is not installed "
                       "(pip install 'edgekit[qnn]')"),) if self.qnn else ()),
            ("distillation", "teacher -> student with the project's [distill] settings, shipped if better on calib"
             if self.distill else "none"),
            *((("pruning", f"{self.prune['label']} ({self.prune['importance']} importance), then "
                + (f"{self.prune['epochs']} epochs of KD from the unpruned model" if self.prune["epochs"]
                   else "no recovery")),) if self.prune else ()),
            ("budgets", self.describe_budgets()),
            ("stages", " -> ".join(self.stages)),
            *(("note", note) for note in self.notes),
        ]


def valid_paths(profile: DeviceProfile) -> list[tuple[str, str, str]]:
    """(format, backend, compute unit kind) the profile lists and an exporter supports."""
    return [(p.format, p.backend, cu.kind) for cu, p in profile.paths()
            if p.format in EXPORTERS and p.backend in EXPORTERS[p.format].backends]


QUANT_CHOICES = ("none", *SCHEMES, "auto")
CLASSIFIER_ONLY = ("int8-qat", "mixed")
TRANSFORMER_INT8 = (("executorch", "xnnpack"), ("onnx", "cpu"), ("tflite", "xnnpack"))  # see Int8Dynamic.embeddings


def resolve_quant(profile: DeviceProfile, quant: str) -> str:
    """``auto`` = the profile's recommended scheme, if this edgekit can build it."""
    if quant != "auto":
        return quant
    if profile.default.quant not in ("none", *SCHEMES):
        raise PlanError(f"{profile.id} recommends {profile.default.quant!r}, which this edgekit cannot build yet; "
                        f"use --quant {' or --quant '.join(['none', *SCHEMES])}")
    return profile.default.quant


def accuracy_budget(profile: DeviceProfile, max_accuracy_drop: float | None = None) -> float:
    """The accuracy budget in points: ``--max-accuracy-drop`` when given, else the profile's."""
    if max_accuracy_drop is not None and not 0 <= max_accuracy_drop < math.inf:
        raise PlanError(f"--max-accuracy-drop must be >= 0 points and finite, got {max_accuracy_drop:g}")
    return profile.budgets.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop


def make_plan(profile: DeviceProfile, fmt: str | None = None, backend: str | None = None, *args: Any,
              validate_on: str = "host", **kwargs: Any) -> Plan:
    """:func:`plan_stages`'s plan; ``validate_on="emu"`` adds the ``arm64`` stage (``edgekit build --validate-on
    emu``: the bundle on the profile's arm64 CPU under QEMU before it is written)."""
    plan = plan_stages(profile, fmt, backend, *args, **kwargs)
    if validate_on == "host":
        return plan
    if validate_on != "emu":
        raise PlanError(f"--validate-on must be host or emu, not {validate_on!r}")
    if profile.arch != "arm64" or profile.os not in ("linux", "android") or profile.cpu_isa is None:
        raise PlanError(f"--validate-on emu needs an arm64 Linux or Android profile with a [cpu_isa] table; "
                        f"{profile.id} is {profile.os}/{profile.arch}")
    return plan.model_copy(update={"stages": (*plan.stages, "arm64")})


def plan_stages(profile: DeviceProfile, fmt: str | None = None, backend: str | None = None,
                quant: str = "none", calib_samples: int = 128, qat_epochs: int = 3, group_size: int = 32,
                keep_float: tuple[str, ...] = (), max_accuracy_drop: float | None = None,
                distill: bool = False, task: str = "classification", language_model: object = None,
                budget: dict[str, float] | None = None, prune: str | None = None, prune_epochs: int = 20,
                prune_importance: str = "magnitude") -> Plan:
    """Pick format/backend (profile default unless overridden) and check it can be built.

    ``keep_float`` (mixed only) names the layers to keep in float instead of searching for them;
    ``max_accuracy_drop`` overrides the profile's budget (points) for quantized builds; ``budget`` overrides
    any of the profile's budgets (keys of :data:`edgekit.budgets.KEYS`, as ``--budget KEY=VALUE``), and the
    plan's ``budgets`` are the limits the build is checked against. ``task``: what needs labels (QAT, mixed
    precision's sensitivity, the KD stage) is offered to classifiers only. ``language_model``: the project's
    ``[language_model]`` settings (its ``quantize`` table), for that task. ``prune``: ``--prune KIND:RATIO``
    (:mod:`edgekit.prune`), recovered by ``prune_epochs`` of KD from the unpruned model."""
    from edgekit.budgets import resolve

    if max_accuracy_drop is not None and budget and "accuracy_drop" in budget:
        raise PlanError("give the accuracy budget once: --max-accuracy-drop or --budget accuracy_drop=..., not both")
    limits = resolve(profile, budget)
    if max_accuracy_drop is not None:
        limits["accuracy_drop"] = accuracy_budget(profile, max_accuracy_drop)
    if task == "language-model":
        plan = _language_model_plan(profile, fmt, backend, quant, distill, group_size, language_model)
    else:
        plan = _plan(profile, fmt, backend, quant, calib_samples, qat_epochs, group_size, keep_float,
                     limits["accuracy_drop"], distill, task)
    if prune is not None:
        plan = _with_pruning(plan, prune, prune_epochs, prune_importance)
    return plan.model_copy(update={"budgets": limits})


def _with_pruning(plan: Plan, prune: str, epochs: int, importance: str) -> Plan:
    """The plan with a ``prune`` stage after distillation (before anything is exported)."""
    from edgekit.prune import IMPORTANCE, PruneSpec

    if importance not in IMPORTANCE:
        raise PlanError(f"--prune-importance must be one of {', '.join(IMPORTANCE)}, not {importance!r}")
    if epochs < 0:
        raise PlanError(f"--prune-epochs must be >= 0, not {epochs}")
    spec = PruneSpec.parse(prune, epochs=epochs, importance=importance)
    if spec.target == "latency" and (plan.task != "classification" or plan.backend == "qnn"
                                     or not EXPORTERS[plan.format].backends[plan.backend].runs_on_host):
        raise PlanError(f"--prune {spec.label} measures the latency of each candidate in the build's runtime on this "
                        f"host, which {plan.format}/{plan.backend} for a {plan.task} project does not allow; give a "
                        "ratio of parameters (structured:RATIO) or build a classifier for a path that runs here")
    if plan.task not in ("classification", "language-model"):
        raise PlanError(f"--prune is built for classifiers and language models (recovered with the KD loss); this is "
                        f"a {plan.task} project")
    if spec.kind != "structured" and plan.quant == "int8-qat":
        raise PlanError(f"--prune {spec.label} with --quant int8-qat: QAT retrains every weight and would fill the "
                        "zeros back in; use --quant int8 (post-training) or structured pruning")
    stages = list(plan.stages)
    stages.insert(stages.index("export"), "prune")
    return plan.model_copy(update={"prune": spec.model_dump() | {"label": spec.label}, "stages": tuple(stages)})


def _plan(profile: DeviceProfile, fmt: str | None, backend: str | None, quant: str, calib_samples: int,
          qat_epochs: int, group_size: int, keep_float: tuple[str, ...], max_accuracy_drop: float, distill: bool,
          task: str) -> Plan:
    quant = resolve_quant(profile, quant)
    if task != "classification" and quant in CLASSIFIER_ONLY:
        raise PlanError(f"--quant {quant} trains or measures against class labels; a {task} project can use "
                        f"--quant {' / '.join(s for s in ('none', *SCHEMES) if s not in CLASSIFIER_ONLY)}")
    if keep_float and quant != "mixed":
        raise PlanError(f"--keep-float applies to --quant mixed, not --quant {quant}")
    budget = max_accuracy_drop
    if quant not in ("none", *SCHEMES):
        raise PlanError(f"unknown quantization {quant!r}; choose one of: {', '.join(QUANT_CHOICES)}")
    scheme = None
    notes: list[str] = []
    if task != "classification" and quant in ("int8", "int8-dynamic"):
        scheme = SCHEMES["int8-dynamic"](embeddings=True)
        if quant == "int8":
            notes.append("int8 for a transformer is the dynamic recipe (linear layers with activations quantized "
                         "at run time, int8 embedding tables): static int8 activations lose too much there")
        quant = "int8-dynamic"
    elif quant == "int8-qat":
        scheme = SCHEMES[quant](epochs=qat_epochs)
    elif quant == "int4-weight-only":
        scheme = SCHEMES[quant](group_size=group_size)
    elif quant == "int8":
        scheme = SCHEMES[quant](calib_samples=calib_samples)
    elif quant == "mixed":
        scheme = SCHEMES[quant](calib_samples=calib_samples, float_layers=tuple(keep_float))
    elif quant != "none":
        scheme = SCHEMES[quant]()
    precision = scheme.precision if scheme else "fp32"
    options = valid_paths(profile)
    listed = ", ".join(f"{f}/{b} ({k})" for f, b, k in options)
    default = (profile.default.format, profile.default.backend)
    if fmt is None and backend is None:
        fmt, backend = default
    elif backend is None:
        matches = [(f, b) for f, b, _ in options if f == fmt]
        if not matches:
            raise PlanError(f"format {fmt!r} is not available on {profile.id}; it supports: {listed}")
        # the first of the format's paths (the profile lists the fastest compute unit first) that builds the
        # requested precision and scheme: galaxy-s24's --format tflite is its NPU for int8, its CPU for fp32
        builds = [m for m in matches if precision in EXPORTERS[m[0]].backends[m[1]].precisions
                  and precision in profile.find_path(*m)[1].precisions
                  and (scheme is None or scheme.name in EXPORTERS[m[0]].backends[m[1]].quant_schemes)]
        fmt, backend = default if default in matches else (builds or matches)[0]
    elif fmt is None:
        matches = [(f, b) for f, b, _ in options if b == backend]
        if not matches:
            raise PlanError(f"backend {backend!r} is not available on {profile.id}; it supports: {listed}")
        fmt, backend = default if default in matches else matches[0]
    found = profile.find_path(fmt, backend)
    if found is None or (fmt, backend) not in {(f, b) for f, b, _ in options}:
        raise PlanError(f"{fmt}/{backend} is not available on {profile.id}; it supports: {listed}")
    cu, path = found
    spec = EXPORTERS[fmt].backends[backend]
    if scheme is not None and getattr(scheme, "embeddings", False) and (fmt, backend) not in TRANSFORMER_INT8:
        raise PlanError(f"int8 for {task} models is built for "
                        f"{', '.join(f'{f}/{b}' for f, b in TRANSFORMER_INT8)}, not {fmt}/{backend} "
                        "(its quantizer offers static int8 activations only, which lose too much on transformers); "
                        "use --quant fp16 or --quant none here, or one of those paths")
    if scheme and scheme.name not in spec.quant_schemes:
        others = [f"{f}/{b}" for f, b, _ in options if scheme.name in EXPORTERS[f].backends[b].quant_schemes]
        raise PlanError(f"--quant {scheme.name} is not available for {fmt}/{backend} on {profile.id}; "
                        f"it works with: {', '.join(others) or 'no path of this device'}")
    if precision not in spec.precisions or precision not in path.precisions:
        ok = sorted(set(spec.precisions) & set(path.precisions))
        others = [f"{f}/{b}" for f, b, _ in options
                  if precision in EXPORTERS[f].backends[b].precisions
                  and precision in profile.find_path(f, b)[1].precisions]
        raise PlanError(f"{precision} is not available for {fmt}/{backend} on {profile.id} "
                        f"(it builds: {', '.join(ok) or 'nothing'}); {precision} works with: "
                        f"{', '.join(others) or 'no path of this device'}")
    qnn = None
    if backend == "qnn" and profile.qnn is not None:
        from edgekit import qnn as qnn_tools

        qnn = {**profile.qnn.model_dump(), "emulator": qnn_tools.available()}
    return Plan(
        device=profile.id, compute_unit=f"{cu.kind}: {cu.name}", format=fmt, backend=backend, qnn=qnn,
        backend_description=spec.description, runtime=EXPORTERS[fmt].runtime, runtime_target=spec.runtime_target,
        precision=precision, quant=quant, quant_scheme=scheme.to_dict() if scheme else None,
        profile_default_quant=profile.default.quant,
        validation="target-runtime" if spec.runs_on_host else "host-twin", host_twin=spec.host_twin,
        atol=EXPORTERS[fmt].atol.get(precision),
        max_accuracy_drop=budget if scheme and task == "classification" else None,
        distill=distill, task=task, notes=tuple(notes),
        stages=("load", *(("distill",) if distill else ()), "export", "validate",
                *((*(("analyze",) if quant == "mixed" else ()), "quantize" if quant != "int8-qat" else "qat",
                   "validate") if scheme else ()), *(("compile",) if qnn else ()), "bundle"),
    )


LM_QUANT = {"int8-weight-only": 8, "int8": 8, "int8-dynamic": 8, "int4-weight-only": 4}  # --quant -> weight bits


def _language_model_plan(profile: DeviceProfile, fmt: str | None, backend: str | None, quant: str,
                         distill: bool, group_size: int = 32, language_model: object = None) -> Plan:
    """A language model: exported with its KV cache (edgekit.lm), fp32 or with its weights quantized by the
    backend's own tool (edgekit.lm.quantize), on a CPU path of the profile."""
    from edgekit.lm.export import PATHS as FORMATS
    from edgekit.project import LanguageModelQuantSpec
    from edgekit.quantize.schemes import LMWeights

    notes = ["language model: exported with its KV cache; validated on logits along PyTorch's greedy "
             "continuation, the continuation itself and perplexity"]
    if quant == "auto":
        quant = "none"
        notes.append("--quant auto builds a language model in fp32; --quant int4-weight-only or int8-weight-only "
                     "quantize its weights")
    if quant != "none" and quant not in LM_QUANT:
        raise PlanError(f"--quant {quant} is not built for language models; use --quant none, int8-weight-only or "
                        "int4-weight-only")
    if distill:
        notes.append("distill: a student trained from the [teacher] with token-level KD on its top-k next-token "
                     "logits (edgekit.lm.distill); the best epoch chosen by calib perplexity")
    options = [(f, b) for f, b, _ in valid_paths(profile) if b in FORMATS.get(f, ())]
    chosen = [(f, b) for f, b in options if (fmt is None or f == fmt) and (backend is None or b == backend)]
    default = (profile.default.format, profile.default.backend)
    if not chosen:
        listed = ", ".join(f"{f}/{b}" for f, b in options) or "none"
        raise PlanError(f"a language model builds for {', '.join(f'{f}/{b[0]}' for f, b in FORMATS.items())}; on "
                        f"{profile.id} that leaves: {listed}" + (f" (not {fmt or '*'}/{backend or '*'})"
                                                                 if fmt or backend else ""))
    fmt, backend = default if default in chosen else chosen[0]
    scheme = None
    if quant != "none":
        q = getattr(language_model, "quantize", None) or LanguageModelQuantSpec()
        bits = LM_QUANT[quant]
        if fmt == "tflite" and bits == 4 and group_size not in (32, 64, 128, 256):
            raise PlanError(f"LiteRT's int4 blocks are 32, 64, 128 or 256 weights, not --group-size {group_size}")
        if fmt == "onnx" and bits == 4 and (group_size < 16 or group_size & (group_size - 1)):
            raise PlanError(f"ONNX Runtime's MatMulNBits blocks are a power of two >= 16, not --group-size "
                            f"{group_size}")
        asymmetric = q.asymmetric and bits == 4
        if q.hqq and fmt != "executorch":
            notes.append(f"[language_model.quantize] hqq applies to ExecuTorch; {fmt} picks its own scales")
        if q.hqq and asymmetric:
            notes.append("[language_model.quantize] hqq is not used with asymmetric: each block's scale is its step")
        smoothquant = q.smoothquant if fmt == "executorch" and bits == 8 else 0.0
        if smoothquant:
            notes.append(f"SmoothQuant (alpha {smoothquant}, on the calib windows) before ExecuTorch's 8da8w: the "
                         "int8 activations' outlier channels moved into the weights")
        scheme = LMWeights(bits=bits, group_size=group_size if bits == 4 else 0, embedding=q.embedding,
                           output=q.output, accuracy_level=q.accuracy_level, hqq=q.hqq and fmt == "executorch",
                           asymmetric=asymmetric, smoothquant=smoothquant)
        if quant != f"int{bits}-weight-only":
            notes.append(f"--quant {quant} for a language model is int{bits}-weight-only: the weights quantized by "
                         "the backend's own LLM tool (see the scheme for the activations)")
        quant = f"int{bits}-weight-only"
    cu, _ = profile.find_path(fmt, backend)
    spec = EXPORTERS[fmt].backends[backend]
    qnn = None
    if backend == "qnn" and profile.qnn is not None:
        from edgekit import qnn as qnn_tools

        qnn = {**profile.qnn.model_dump(), "emulator": qnn_tools.available()}
    return Plan(
        device=profile.id, compute_unit=f"{cu.kind}: {cu.name}", format=fmt, backend=backend, qnn=qnn,
        backend_description=spec.description, runtime=EXPORTERS[fmt].runtime, runtime_target=spec.runtime_target,
        precision=scheme.precision if scheme else "fp32", quant=quant,
        quant_scheme=scheme.to_dict() if scheme else None, profile_default_quant=profile.default.quant,
        validation="target-runtime", host_twin="", atol=None, max_accuracy_drop=None, distill=distill,
        task="language-model", notes=tuple(notes),
        stages=("load", *(("distill",) if distill else ()), "export", "validate",
                *(("quantize", "validate") if scheme else ()), "bundle"))

"""The Python API for apps and scripts: build a bundle, open one, run it.

>>> import edgekit
>>> bundle = edgekit.build(device="host-cpu", project="examples/minilm", quant="int8")  # doctest: +SKIP
>>> bundle = edgekit.Bundle.open("build/host-cpu")                                     # doctest: +SKIP
>>> bundle.embed(["How do I open a file?", "What is a generator?"]).shape             # doctest: +SKIP
(2, 384)
>>> bundle.predict({"image": x})["logits"]                                               # doctest: +SKIP

``Bundle.open`` verifies every file against the manifest first (a missing or modified file is a
BundleError); ``predict`` runs the bundle's model in its own runtime through the runner's adapters
(ExecuTorch, ONNX Runtime or LiteRT), the same code that measures it on a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgekit_runner.manifest import Manifest, MethodSpec

from edgekit.errors import BundleError


@dataclass(frozen=True)
class BuildRequest:
    """What ``edgekit build`` was asked for, resolved: the profile, the project, the plan and the bundle folder."""

    profile: Any
    project: Any
    plan: Any
    out: Path


def plan_build(device: str, project: str | Path | None = None, *, quant: str = "auto", format: str | None = None,
               backend: str | None = None, distill: bool = True, out: str | Path | None = None,
               profiles_dirs: list[Path] | None = None, **options: Any) -> BuildRequest:
    """Load the profile and the project and make the plan (no work done; impossible requests are refused).
    ``options``: calib_samples, qat_epochs, group_size, keep_float, max_accuracy_drop, validate_on, budget (a dict of
    :data:`edgekit.budgets.KEYS` overrides) as the CLI's."""
    from edgekit.plan import make_plan
    from edgekit.profiles import ProfileRegistry
    from edgekit.project import load_project

    profile = ProfileRegistry(profiles_dirs).load(device)
    spec = load_project(project)
    plan = make_plan(profile, format, backend, quant=quant, distill=distill and spec.teacher is not None,
                     task=spec.task.kind, language_model=spec.language_model, **options)
    if plan.distill:
        from edgekit.distill.project import DistillSpec, check_task

        check_task(spec, spec.distill or DistillSpec())
    single = ("int8", "int8-qat", "mixed")  # calibrated or trained on one input array, so far
    one_input_distill = plan.distill and not (spec.distill and spec.distill.embedding)
    if len(spec.inputs) > 1 and (plan.quant in single or one_input_distill):
        from edgekit.errors import PlanError

        what = "the distill stage" if one_input_distill else f"--quant {plan.quant}"
        raise PlanError(f"{what} works on one-input models so far; this project has {len(spec.inputs)} inputs: "
                        "build with --quant none / fp16 / int8-dynamic" + (" and --no-distill" if one_input_distill
                                                                           else ""))
    return BuildRequest(profile, spec, plan, Path(out) if out is not None else Path("build") / profile.id)


def build(device: str, project: str | Path | None = None, *, quant: str = "auto", out: str | Path | None = None,
          force: bool = False, fail_on_budget: bool = True, **options: Any) -> Bundle:
    """Build the project for ``device`` (as ``edgekit build``) and open the bundle. Raises the EdgekitError
    subclasses the CLI maps to exit codes; a missed budget raises :class:`edgekit.budgets.BudgetMissed` after the
    bundle is written (unless ``fail_on_budget`` is False: the checks are in ``manifest.data["budgets"]``).
    ``options`` as :func:`plan_build` (format, backend, distill, ``budget={"latency_p90_ms": 5.0}``, ...)."""
    from edgekit.bundle import check_destination
    from edgekit.pipeline import build as run_build
    from edgekit.signals import handle_signals

    request = plan_build(device, project, quant=quant, out=out, **options)
    check_destination(request.out, force)
    with handle_signals():
        result = run_build(request.profile, request.project, request.plan, request.out, force=force)
    from edgekit.budgets import raise_if_missed

    raise_if_missed(result.budgets, f"the bundle ({result.bundle}) was written, but it", fail_on_budget)
    return Bundle.open(result.bundle)


@dataclass(frozen=True)
class Generated:
    """What :meth:`Bundle.generate` produced: the continuation (``str()`` of it is the text) and how fast."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    time_to_first_token_ms: float
    decode_tokens_per_s: float | None  # None when only one token was generated
    stopped_at_eos: bool

    def __str__(self) -> str:
        return self.text


@dataclass
class Bundle:
    """A verified bundle: its folder and its typed manifest, and the model, loaded on first use."""

    path: Path
    manifest: Manifest
    _models: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Verify ``path`` (every file against its sha256) and read its manifest; BundleError if anything is off."""
        from edgekit.bundle import verify

        data, problems = verify(Path(path))
        if problems:
            raise BundleError(f"{path} failed verification: {'; '.join(problems[:3])}; rebuild it")
        return cls(Path(path), Manifest(data))

    @property
    def task(self) -> str:
        return self.manifest.task

    def method(self, name: str = "forward") -> MethodSpec:
        found = next((m for m in self.manifest.methods if m.name == name), None)
        if found is None:
            raise BundleError(f"{self.path} has no method {name!r} (it has "
                              f"{', '.join(m.name for m in self.manifest.methods)})")
        return found

    def predict(self, inputs: dict[str, np.ndarray] | np.ndarray, threads: int | None = None) -> dict[str, np.ndarray]:
        """Run the model on named inputs (a dict of arrays, batch first, any number of samples; one array for a
        one-input model) in the bundle's runtime; the outputs by name."""
        from edgekit_runner import evaluate

        if self.task == "language-model":
            raise ValueError(f"{self.path} is a language model with a KV cache: use generate()")
        method = self.method()
        named = {method.inputs[0].name: inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
        names = [t.name for t in method.inputs]
        if sorted(named) != sorted(names):
            raise ValueError(f"{self.path}: the model takes inputs {', '.join(names)}; "
                             f"got {', '.join(named) or 'none'}")
        arrays = []
        for spec in method.inputs:
            a = np.asarray(named[spec.name])
            fixed = [(got, want) for got, want in zip(a.shape[1:], spec.shape[1:]) if isinstance(want, int)]
            if a.ndim != len(spec.shape) or any(got != want for got, want in fixed):
                raise ValueError(f"input {spec.name!r} has shape {list(a.shape)}; the model takes {list(spec.shape)} "
                                 "(batch first)")
            if a.dtype.name != spec.dtype:
                if not np.can_cast(a.dtype, spec.dtype, casting="same_kind"):
                    raise ValueError(f"input {spec.name!r} is {a.dtype.name}; the model takes {spec.dtype}")
                a = a.astype(spec.dtype)
            arrays.append(np.ascontiguousarray(a))
        outputs = evaluate.run_dataset(self._model(threads), arrays)
        return {t.name: o.reshape(len(arrays[0]), *o.shape[1:]) for t, o in zip(method.outputs, outputs)}

    def embed(self, texts: list[str], threads: int | None = None) -> np.ndarray:
        """Sentence embeddings of ``texts`` (an embedding bundle), tokenized with the bundle's own tokenizer."""
        tok = self.manifest.data.get("tokenizer") or {}
        if self.task != "embedding" or not tok:
            raise ValueError(f"{self.path}: embed() needs an embedding bundle with a tokenizer (built from [model] hf); "
                             f"this one's task is {self.task}")
        from edgekit.tokenizer import tokenize

        method = self.method()
        length = tok.get("max_length") or method.inputs[0].shape[1]
        arrays = tokenize(self.path, list(texts), [t.name for t in method.inputs], length,
                          tokenizer_file=tok["file"])
        return next(iter(self.predict(arrays, threads).values()))

    def generate(self, prompt: str | list[int], max_new_tokens: int = 32, threads: int | None = None,
                 stop_at_eos: bool = True) -> Generated:
        """Greedy continuation of ``prompt`` (text, tokenized with the bundle's tokenizer, or token ids) by a
        language-model bundle, through its KV cache in the bundle's runtime. ValueError (one line) for a prompt
        that leaves no room within the bundle's maximum context.

        >>> str(Bundle.open("build/tiny_lm").generate("The for statement", max_new_tokens=16))  # doctest: +SKIP
        """
        from edgekit_runner import lm

        if self.task != "language-model":
            raise ValueError(f"{self.path}: generate() needs a language-model bundle; this one's task is {self.task}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        tok = self._tokenizer()
        ids = tok.encode(prompt).ids if isinstance(prompt, str) else [int(t) for t in prompt]
        session = self._session(threads)
        if ids and not (0 <= min(ids) and max(ids) < session.vocab_size):
            raise ValueError(f"token ids must be in 0..{session.vocab_size - 1}")
        out = lm.generate(session, ids, max_new_tokens, stop_at_eos)
        per_token = sum(out.decode_ms) / len(out.decode_ms) if out.decode_ms else None
        return Generated(tok.decode(out.tokens), out.tokens, len(ids), out.time_to_first_token_ms,
                         1e3 / per_token if per_token else None, out.stopped_at_eos)

    def _tokenizer(self) -> Any:
        if "tokenizer" not in self._models:
            from tokenizers import Tokenizer

            tok = self.manifest.data.get("tokenizer") or {}
            if not tok:
                raise ValueError(f"{self.path} has no tokenizer; pass token ids instead of text")
            self._models["tokenizer"] = Tokenizer.from_file(str(self.path / tok["file"]))
        return self._models["tokenizer"]

    def _session(self, threads: int | None) -> Any:
        key = f"session threads={threads}"
        if key not in self._models:
            from edgekit_runner import lm, runtimes

            runtimes.import_runtime(self.manifest.runtime)
            model = self.manifest.data["model"]
            self._models[key] = lm.open_session(self.path / self.manifest.model_file, self.manifest.runtime,
                                                self.manifest.data["language_model"]["cache"], threads,
                                                model.get("runtime_target"))
        return self._models[key]

    def _model(self, threads: int | None) -> Any:
        key = f"threads={threads}"
        if key not in self._models:
            from edgekit_runner import runtimes

            runtimes.import_runtime(self.manifest.runtime)
            model = self.manifest.data["model"]
            self._models[key] = runtimes.load(self.path / self.manifest.model_file, self.manifest.runtime, threads,
                                              model.get("runtime_target"))
        return self._models[key]

    def __repr__(self) -> str:
        m = self.manifest.data["model"]
        return (f"Bundle({str(self.path)!r}, task={self.task!r}, {m['format']}/{m['backend']} {m['precision']}, "
                f"profile={self.manifest.data['profile']['id']!r})")

"""The build stages of a ``language-model`` project: load [-> distill] -> export -> validate [-> quantize ->
validate] -> bundle.

The same :class:`edgekit.pipeline.Build` record and stage names as every build; what differs is what a
stage does. The reference is not the model's outputs on the eval split (a vocabulary of logits per token
does not fit a bundle) but what a language model is judged by: PyTorch's greedy continuation of the
project's prompt and its perplexity on the eval windows. The export (:mod:`edgekit.lm.export`, with the
format's KV cache) is validated in its runtime through the runner's own decoding session
(:mod:`edgekit_runner.lm`): its logits for the prompt and then token by token along PyTorch's continuation
must match PyTorch's, its greedy continuation must be the same tokens, and its perplexity the same.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.emu_stage import arm64_stage
from edgekit.errors import ExportError, ProjectError
from edgekit.export import EXPORTERS
from edgekit.export.base import ExportResult, subdir
from edgekit.validate import OutputComparison, ValidationResult

RELATIVE_TOLERANCE = 1e-4  # fp32: max |logit error| <= this x max(1, max |logit|) over the checked positions
DEFAULT_MAX_CONTEXT = 512


def settings(b: Any) -> Any:
    return b.project.language_model


def load_tokenizer(b: Any) -> tuple[Any, Path]:
    """The project's tokenizer, checked against the model's vocabulary."""
    from tokenizers import Tokenizer

    from edgekit.project import tokenizer_file

    path = tokenizer_file(b.project)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for a bad file
        raise ProjectError(f"tokenizer {path}: cannot be read ({str(e).splitlines()[0] if str(e) else e})") from None
    vocab = b.model.config.vocab_size
    if tok.get_vocab_size() > vocab:
        raise ProjectError(f"tokenizer {path} has {tok.get_vocab_size()} tokens, more than the model's vocabulary "
                           f"of {vocab}: it is not this model's tokenizer")
    return tok, path


def load_stage(b: Any) -> None:
    """Data windows, the model (as edgekit's decoder), the tokenized prompt, PyTorch's greedy continuation and
    perplexity."""
    import torch

    from edgekit.project import load_data, load_model

    spec = settings(b)
    b.say("load", f"data and language model of project {b.project.name!r}")
    torch.manual_seed(b.project.seed)
    b.splits = load_data(b.project)
    b.model = load_model(b.project)
    c = b.model.config
    max_context = spec.max_context or min(c.max_position_embeddings, DEFAULT_MAX_CONTEXT)
    if max_context > c.max_position_embeddings:
        raise ProjectError(f"[language_model] max_context = {max_context} is more than the model's "
                           f"max_position_embeddings ({c.max_position_embeddings})")
    window = b.project.inputs[0].shape[1]
    if window > max_context:
        raise ProjectError(f"eval windows of {window} tokens do not fit max_context = {max_context}; declare a "
                           "shorter [[inputs]] shape or a longer max_context")
    tok, tok_path = load_tokenizer(b)
    prompt = tok.encode(spec.prompt).ids
    if len(prompt) + spec.new_tokens > max_context:
        raise ProjectError(f"the prompt ({len(prompt)} tokens) and new_tokens = {spec.new_tokens} do not fit "
                           f"max_context = {max_context}; shorten the prompt or raise max_context")
    b.language_model = {
        "max_context": max_context, "prompt": spec.prompt, "prompt_ids": prompt,
        "windows": b.splits["eval"].x[: spec.eval_windows], "tokenizer_path": tok_path,
        "prefill_lengths": sorted({min(n, window - 1, max_context - 1) for n in spec.prefill_lengths}),
    }
    if "distill" not in b.plan.stages:  # else the reference is the distilled student's, made by that stage
        set_reference(b, "load")


def set_reference(b: Any, stage: str) -> None:
    """PyTorch's greedy continuation of the prompt and perplexity on the eval windows: what the export must
    reproduce."""
    from edgekit.lm.distill import perplexity

    lm, n = b.language_model, settings(b).new_tokens
    b.say(stage, f"PyTorch reference: greedy continuation ({n} tokens), perplexity on {len(lm['windows'])} eval "
                 "windows")
    lm["greedy"] = reference_greedy(b.model, lm["prompt_ids"], n)
    lm["reference_perplexity"] = perplexity(b.model, lm["windows"])
    b.reference = [np.asarray([lm["greedy"]], np.int64)]


def distill_stage(b: Any) -> None:
    """A student trained with token-level KD from the project's teacher (:mod:`edgekit.lm.distill`); it replaces
    the model when it is the better of the two on the calib split (:mod:`edgekit.selection`)."""
    from edgekit.lm.distill import distill_for_build
    from edgekit.selection import choose_shipped

    b.say("distill", f"teacher {b.project.teacher.source}")
    student, b.teacher, b.distilled = distill_for_build(b.project, b.splits, b.model,
                                                        lambda msg: b.say("distill", msg))
    if choose_shipped(b, student):
        set_reference(b, "distill")


def prune_stage(b: Any) -> None:
    """--prune structured:R: MLP neurons and query heads removed (:mod:`edgekit.lm.prune`), recovered with
    token-level KD from the unpruned decoder; the reference is then the pruned decoder's."""
    from edgekit.lm.prune import prune_for_build
    from edgekit.prune import PruneSpec

    spec = PruneSpec.from_plan(b.plan.prune)
    d = b.project.distill
    b.say("prune", spec.label)
    windows = {name: b.splits[name].x for name in ("train", "calib", "eval")}
    b.model, b.pruned = prune_for_build(b.model, windows, spec, d.temperature if d else 2.0, d.alpha if d else 0.5,
                                        d.batch_size if d else 16, b.project.seed, lambda msg: b.say("prune", msg))
    set_reference(b, "prune")


def reference_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    """PyTorch's greedy continuation (the full causal forward each step: no cache involved)."""
    import torch

    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def export_stage(b: Any) -> None:
    from edgekit.lm.export import EXPORTS, PATHS

    lm = b.language_model
    b.say("export", f"{b.plan.format}/{b.plan.backend} fp32 with a KV cache of {lm['max_context']} positions")
    path = subdir(b.work, "fp32") / f"model{EXPORTERS[b.plan.format].extension}"
    extra = (min(settings(b).prefill, lm["max_context"]),) if b.plan.format == "tflite" else ()
    if b.plan.backend not in PATHS.get(b.plan.format, ()):
        raise ExportError(f"{b.plan.format}/{b.plan.backend} cannot export a language model")
    details = EXPORTS[b.plan.format](b.model, path, lm["max_context"], *extra)
    b.fp32 = ExportResult(path, details={"language_model": details})


def quantize_stage(b: Any) -> None:
    """The weights quantized with the backend's own tool (:mod:`edgekit.lm.quantize`); the bits per weight
    are read back from the artifact."""
    from edgekit.lm import quantize as lq
    from edgekit.lm.export import executorch, litert
    from edgekit.quantize.schemes import scheme_from_dict

    scheme, fmt, lm = scheme_from_dict(b.plan.quant_scheme), b.plan.format, b.language_model
    b.say("quantize", f"{b.plan.quant} ({scheme.precision}) with the {fmt} backend's own tool")
    path = subdir(b.work, "quant") / f"model{EXPORTERS[fmt].extension}"
    export = b.fp32.details["language_model"]
    if fmt == "executorch":
        decoder, details = lq.executorch_decoder(b.model, scheme, b.splits["calib"].x)
        export = executorch(decoder, path, lm["max_context"], quantized=True)
    elif fmt == "onnx":
        details = lq.onnx(b.fp32.model_path, path, scheme, b.model.config.vocab_size)
    else:
        source = b.fp32.model_path
        if scheme.bits == 4 and scheme.asymmetric:  # the split decoder, exported with the fp32 one's signatures
            source = subdir(b.work, "split") / "model.tflite"
            b.say("quantize", "asymmetric int4: exporting the decoder again, each linear layer split into "
                              "block-centred weights and block offsets")
            litert(lq.litert_decoder(b.model, scheme), source, lm["max_context"], export["cache"]["prefill"])
        details = lq.litert(source, path, scheme)
    c = b.model.config
    state = 2 * c.num_hidden_layers * int(np.prod(export["cache"]["shape"])) * 4 if fmt == "executorch" else 0
    bits = lq.weight_bits(path, fmt, sum(p.numel() for p in b.model.parameters()), state)
    b.quantized = ExportResult(path, details={"language_model": export,
                                              "quantization": {**scheme.to_dict(), **details, "stored_bits": bits}})


def validate_stage(b: Any) -> None:
    """Logits along PyTorch's continuation, greedy tokens and perplexity, in the target runtime; a failure
    stops the build (ValidationFailed). fp32 must match PyTorch's logits within the tolerance; a quantized
    artifact is judged by the task's thresholds for quantized models (greedy agreement, perplexity increase)."""
    import torch
    from edgekit_runner import lm as runner_lm
    from edgekit_runner.measure import latency_stats
    from edgekit_runner.tasks import get_task

    lm, plan, artifact = b.language_model, b.plan, b.result
    quantized = b.quantized is not None
    b.say("validate-quantized" if quantized else "validate",
          f"{plan.quant} against PyTorch fp32 in the target runtime: greedy tokens, perplexity, logits"
          if quantized else "fp32 against PyTorch in the target runtime: logits, greedy tokens, perplexity")
    cache = artifact.details["language_model"]["cache"]
    session = runner_lm.open_session(artifact.model_path, plan.runtime, cache, target=plan.runtime_target)
    prompt, greedy = lm["prompt_ids"], lm["greedy"]
    seq = prompt + greedy
    with torch.no_grad():
        ref = b.model(torch.tensor([seq[:-1]]))[0].numpy()
    session.reset()
    got = np.concatenate([session.feed(prompt)] + [session.feed([t]) for t in greedy[:-1]])
    err = np.abs(got.astype(np.float64) - ref)
    atol = None if quantized else RELATIVE_TOLERANCE * max(1.0, float(np.abs(ref).max()))
    generation = runner_lm.generate(session, prompt, len(greedy), stop_at_eos=False)
    b.say("validate", f"perplexity through the export on {len(lm['windows'])} eval windows")
    ppl = runner_lm.perplexity(session, lm["windows"])
    kind = get_task("language-model")
    metrics = kind.score({"greedy": np.asarray(generation.tokens), "perplexity": np.asarray(ppl["perplexity"])},
                         {"greedy_reference": np.asarray(greedy), "reference_perplexity": lm["reference_perplexity"]},
                         None)
    metrics.update(max_abs_logit_error=float(err.max()), eval_tokens=ppl["tokens"],
                   time_to_first_token_ms=generation.time_to_first_token_ms,
                   **({"logit_tolerance": atol} if atol is not None else {}))
    judgement = kind.judge(metrics, b.project.task.options(), quantized=quantized)
    decode = latency_stats(np.asarray(generation.decode_ms) * 1e6)
    v = ValidationResult(
        where="target-runtime", runtime=session.info, artifact=artifact.model_path.name, n_samples=len(seq) - 1,
        atol=atol, outputs=[OutputComparison("logits", float(err.max()), float(err.mean()), list(ref.shape))],
        top1_agreement=None, metric=kind.metric, value=metrics["greedy_agreement"], reference_value=1.0,
        host_latency_ms={**decode, "batch": 1, "per": "decoded token"}, metrics=metrics,
        task_failure=judgement.reason)
    v.raise_if_failed()
    b.validation = v
    if not quantized:
        b.fp32_validation = v


def bundle_stage(b: Any) -> None:
    """Model, eval set (windows, prompt, PyTorch's continuation and perplexity), tokenizer, runner, manifest."""
    from edgekit_runner.manifest import INPUT, MethodSpec, TensorSpec

    from edgekit.bundle_manifest import compose_manifest, copy_runner

    lm, staging = b.language_model, b.staging
    b.say("bundle", str(b.out))
    model_file = f"model{EXPORTERS[b.plan.format].extension}"
    shutil.copy2(b.result.model_path, staging / model_file)
    arrays = {INPUT + "tokens": lm["windows"], "prompt": np.asarray([lm["prompt_ids"]], np.int64),
              "greedy_reference": np.asarray([lm["greedy"]], np.int64),
              "reference_perplexity": np.asarray(lm["reference_perplexity"], np.float64)}
    np.savez(staging / "eval.npz", **arrays)
    shutil.copy2(lm["tokenizer_path"], staging / "tokenizer.json")
    copy_runner(staging / "edgekit_runner")
    c, export = b.model.config, b.result.details["language_model"]
    method = MethodSpec("forward", (TensorSpec("tokens", "int64", (1, "tokens")),),
                        (TensorSpec("logits", "float32", (1, "tokens", c.vocab_size)),),
                        {"tokens": (1, lm["max_context"])})
    manifest = compose_manifest(b.profile, b.project, b.plan, staging / model_file, ["logits"],
                                  [np.zeros((1, 1, c.vocab_size), np.float32)], arrays, b.result, b.validation,
                                  None if b.quantized is None else (b.fp32, b.fp32_validation),
                                  b.warnings, b.distilled, None, b.pruned)
    manifest["methods"] = [method.to_dict()]
    manifest["eval"] = {"file": "eval.npz", "n_samples": len(lm["windows"]),
                        "arrays": {k: list(a.shape) for k, a in arrays.items()}}
    manifest["tokenizer"] = {"file": "tokenizer.json", "kind": "huggingface-tokenizers",
                             "vocab_size": c.vocab_size, "eos_ids": c.eos_ids}
    manifest["language_model"] = {
        "architecture": "llama", "config": c.to_dict(), "parameters": sum(p.numel() for p in b.model.parameters()),
        "max_context": lm["max_context"], "prompt": lm["prompt"], "new_tokens": len(lm["greedy"]),
        "prefill_lengths": lm["prefill_lengths"], "reference_perplexity": lm["reference_perplexity"],
        "cache": export["cache"], "export": {k: v for k, v in export.items() if k != "cache"}}
    b.manifest = manifest


STAGES = {"load": load_stage, "distill": distill_stage, "prune": prune_stage, "export": export_stage, "validate": validate_stage,
          "quantize": quantize_stage, "bundle": bundle_stage, "arm64": arm64_stage}

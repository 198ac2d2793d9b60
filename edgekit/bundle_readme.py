"""The README.md every bundle carries: what goes in and comes out, the runtime it needs, and a minimal
load-and-run snippet for that runtime (for app developers who never open manifest.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit_runner.manifest import MethodSpec

TOKEN_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
SNIPPETS = {
    "onnxruntime": '''import numpy as np, onnxruntime as ort
options = ort.SessionOptions()  # exact int8 kernels on x86-64 CPUs without VNNI (the default ones saturate there)
options.add_session_config_entry("session.x64quantprecision", "1")
session = ort.InferenceSession("{file}", options, providers=["CPUExecutionProvider"])
outputs = session.run(None, {{{feeds}}})''',
    "litert": '''import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path="{file}")
runner = interpreter.get_signature_runner()
outputs = runner({kwargs})''',
    "litert-int8-io": '''import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path="{file}")
runner = interpreter.get_signature_runner()


def quantized(x, d):  # the model takes and gives int8: use each tensor's own scale and zero point
    (scale, zero), info = d["quantization"], np.iinfo(d["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(d["dtype"])


ins, outs = runner.get_input_details(), runner.get_output_details()
outputs = runner({quantized_kwargs})
outputs = {{k: (v.astype(np.float32) - outs[k]["quantization"][1]) * outs[k]["quantization"][0]
           for k, v in outputs.items()}}''',
    "executorch": '''import numpy as np, torch
from executorch.runtime import Runtime
method = Runtime.get().load_program("{file}").load_method("forward")
outputs = method.execute([{tensors}])''',
}
INSTALL = {"onnxruntime": "pip install onnxruntime=={onnxruntime}",
           "litert": "pip install ai-edge-litert=={ai-edge-litert}",
           "executorch": "pip install executorch=={executorch} torch=={torch}"}


CACHE_CALLS = {
    "executorch": "`forward(tokens [1, S] int64, input_pos [1] int64) -> logits [1, S, vocab]`, S from 1 to the "
                  "maximum context; the program keeps the KV cache in its own mutable buffers (import "
                  "`executorch.extension.llm.custom_ops.custom_ops` before loading it: it uses "
                  "`llama::update_cache` and `llama::custom_sdpa`). Call it with the prompt at `input_pos = 0`, "
                  "then with each new token at its position.",
    "onnxruntime": "`input_ids [1, S]` and `past_key_values.N.key/value [1, kv_heads, P, head_dim]` (P = 0 for "
                   "the prompt: empty arrays) -> `logits [1, S, vocab]` and `present.N.key/value` "
                   "`[1, kv_heads, P + S, head_dim]`, which are the next call's past.",
    "litert": "signature `prefill` (a fixed number of tokens: pad a shorter chunk, the padding's cache entries "
              "are overwritten before anything reads them) and `decode` (one token); both take `tokens` and "
              "`input_pos` (int32) and the caches `k_cache_N` / `v_cache_N` `[1, max_context, kv_heads, "
              "head_dim]` (zeros to start) and return `logits` and the updated caches, for the next call.",
}


def _lm_quantization(model: dict[str, Any]) -> list[str]:
    q = model.get("export_details", {}).get("quantization")
    if not q:
        return []
    per = ", ".join(f"{k} {v:g}" for k, v in q["stored_bits"].get("bits_per_weight", {}).items())
    return ["", f"Quantized with {q['tool']}: linear layers {q['linear_layers']}; output layer {q['output_layer']}; "
                f"embedding table {q['embedding_table']}. Bits per weight read back from the file: "
                + (f"{per} (scales included); " if per else "")
                + f"{q['stored_bits']['file_bits_per_parameter']:g} for the whole file per parameter."]


def render_language_model(manifest: dict[str, Any]) -> str:
    """The README of a language-model bundle: the decoding contract of its format and a generation snippet."""
    model, versions, lm = manifest["model"], manifest.get("versions", {}), manifest["language_model"]
    met, c = manifest["validation"].get("metrics", {}), lm["config"]
    runtime = model["runtime"]
    return "\n".join([
        f"# {manifest['project']['name']} for {manifest['profile']['name']}", "",
        f"`{model['file']}`: a {lm['parameters']:,}-parameter Llama-architecture language model ({c['num_hidden_layers']} "
        f"layers, {c['num_attention_heads']} heads / {c['num_key_value_heads']} KV heads, vocabulary "
        f"{c['vocab_size']:,}) for {model['format']}/{model['backend']}, {model['precision']}, maximum context "
        f"{lm['max_context']} tokens; built by edgekit {versions.get('edgekit', '?')} on {manifest['created_at']}.",
        "", f"Validated in its runtime against PyTorch fp32: greedy continuation of the prompt {lm['prompt']!r} "
            f"the same as PyTorch's for the first {met.get('greedy_agreement', 0):.0%} of {lm['new_tokens']} tokens; "
            f"perplexity {met.get('perplexity', float('nan')):.3f} on {met.get('eval_tokens', '?')} eval tokens "
            f"(PyTorch {lm['reference_perplexity']:.3f}).", *_lm_quantization(model), *_pruning(manifest),
        "", "## Calling it", "", CACHE_CALLS[runtime], "",
        f"Tokens come from `{manifest['tokenizer']['file']}` (Hugging Face `tokenizers`); end-of-text ids: "
        f"{manifest['tokenizer'].get('eos_ids')}.", "",
        "## Generate", "", "```sh", INSTALL[runtime].format(**{k: versions.get(k, "?") for k in
                                                               ("onnxruntime", "ai-edge-litert", "executorch",
                                                                "torch")}) + " tokenizers numpy", "```", "",
        "```python", "import json",
        "from tokenizers import Tokenizer",
        "from edgekit_runner import lm  # ships in this bundle: numpy + the runtime, no torch for ONNX / LiteRT",
        "cache = json.load(open(\"manifest.json\"))[\"language_model\"][\"cache\"]",
        f"session = lm.open_session(\"{model['file']}\", \"{runtime}\", cache)",
        f"tok = Tokenizer.from_file(\"{manifest['tokenizer']['file']}\")",
        "out = lm.generate(session, tok.encode(\"def main():\").ids, max_new_tokens=32)",
        "print(tok.decode(out.tokens), out.time_to_first_token_ms)", "```", "",
        "Or measure it on the device: `python -m edgekit_runner .` (time to first token, prefill and decode "
        "tokens/s, peak memory, perplexity and greedy agreement on `eval.npz`), and from Python on the host: "
        "`edgekit.Bundle.open(\".\").generate(\"text\", max_new_tokens=32)`.", ""])


def _pruning(manifest: dict[str, Any]) -> list[str]:
    p = manifest.get("prune")
    if not p:
        return []
    rec = p.get("recovery")
    return ["", f"Pruned `{p['label']}` before export: {p['parameters_after']:,} parameters ({p['nonzero_after']:,} "
                f"non-zero) of {p['parameters_before']:,}, "
                + (f"recovered by {rec['epochs']} epochs of knowledge distillation from the unpruned model."
                   if rec else "without recovery training.")]


def render(manifest: dict[str, Any]) -> str:
    """The README text for a schema-2 manifest."""
    if "language_model" in manifest:
        return render_language_model(manifest)
    model, task, versions = manifest["model"], manifest["task"], manifest.get("versions", {})
    method = MethodSpec.from_dict(manifest["methods"][0])
    v = manifest["validation"]
    lines = [f"# {manifest['project']['name']} for {manifest['profile']['name']}", "",
             f"`{model['file']}`: {model['format']}/{model['backend']}, {model['precision']}, built by edgekit "
             f"{versions.get('edgekit', '?')} on {manifest['created_at']}. Task: **{task['kind']}** "
             f"({task['metric']} {v['value']:.4g} on {v['n_samples']} held-out samples; the PyTorch model "
             f"{v['reference_value']:.4g}; validated "
             f"{'in its target runtime' if v['where'] == 'target-runtime' else 'on a host twin'}).",
             *_pruning(manifest), "", "## Inputs and outputs (method `forward`)", "", "| | name | dtype | shape |", "|---|---|---|---|"]
    lines += [f"| input | `{t.name}` | {t.dtype} | {list(t.shape)} |" for t in method.inputs]
    lines += [f"| output | `{t.name}` | {t.dtype} | {list(t.shape)} |" for t in method.outputs]
    lines += ["", "## Preprocessing", ""]
    tok = manifest.get("tokenizer")
    if tok:
        lines += [f"Text is tokenized with `{tok['file']}` (Hugging Face `tokenizers`), padded and truncated to "
                  f"{tok.get('max_length')} tokens; the inputs are its "
                  + ", ".join(f"{t.name} ({t.dtype})" for t in method.inputs) + ".",
                  "", "```python", "import numpy as np", "from tokenizers import Tokenizer",
                  f"tok = Tokenizer.from_file(\"{tok['file']}\")",
                  f"tok.enable_truncation(max_length={tok.get('max_length')}); "
                  f"tok.enable_padding(length={tok.get('max_length')})",
                  "enc = tok.encode(\"some text\")",
                  *(f"{t.name} = np.array([enc.{TOKEN_FIELDS.get(t.name, 'ids')}], dtype=np.{t.dtype})"
                    for t in method.inputs), "```"]
    else:
        lines += ["Inputs are given as the project's data entry produced them (`eval.npz` holds examples: "
                  + ", ".join(f"`input.{t.name}`" for t in method.inputs) + ")."]
    runtime = model["runtime"]
    feeds = ", ".join(f'"{t.name}": {t.name}' for t in method.inputs)
    runtime_names = [i["name"].removeprefix("serving_default_").split(":")[0]
                     for i in v.get("runtime_io", {}).get("inputs", [])]  # LiteRT's signature names (args_0 ...)
    kwargs = ", ".join(f"{r}={t.name}" for r, t in zip(runtime_names or [t.name for t in method.inputs], method.inputs))
    tensors = ", ".join(f"torch.from_numpy({t.name})" for t in method.inputs)
    quantized_kwargs = ", ".join(f"{r}=quantized({t.name}, ins[\"{r}\"])" for r, t in
                                 zip(runtime_names or [t.name for t in method.inputs], method.inputs))
    snippet = "litert-int8-io" if runtime == "litert" and v.get("runtime", {}).get("io_quantized") else runtime
    lines += ["", f"## Run it ({runtime})", "", "```sh", INSTALL[runtime].format(**{k: versions.get(k, "?") for k in
                                                                                   ("onnxruntime", "ai-edge-litert",
                                                                                    "executorch", "torch")}),
              "```", "", "```python",
              SNIPPETS[snippet].format(file=model["file"], feeds=feeds, kwargs=kwargs, tensors=tensors,
                                       quantized_kwargs=quantized_kwargs), "```", "",
              "Or measure it on the device: `python -m edgekit_runner .` (latency, memory and the task's metrics on "
              "`eval.npz`), and from Python on the host: `edgekit.Bundle.open(\".\").predict({...})`.", ""]
    return "\n".join(lines)


def write_readme(staging: Path, manifest: dict[str, Any]) -> None:
    (staging / manifest["readme"]).write_text(render(manifest), encoding="utf-8")

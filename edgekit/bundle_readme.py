"""The README.md every bundle carries: what goes in and comes out, the runtime it needs, and a minimal
load-and-run snippet for that runtime (for app developers who never open manifest.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit_runner.manifest import MethodSpec

TOKEN_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
SNIPPETS = {
    "onnxruntime": '''import numpy as np, onnxruntime as ort
session = ort.InferenceSession("{file}", providers=["CPUExecutionProvider"])
outputs = session.run(None, {{{feeds}}})''',
    "litert": '''import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path="{file}")
runner = interpreter.get_signature_runner()
outputs = runner({kwargs})''',
    "executorch": '''import numpy as np, torch
from executorch.runtime import Runtime
method = Runtime.get().load_program("{file}").load_method("forward")
outputs = method.execute([{tensors}])''',
}
INSTALL = {"onnxruntime": "pip install onnxruntime=={onnxruntime}",
           "litert": "pip install ai-edge-litert=={ai-edge-litert}",
           "executorch": "pip install executorch=={executorch} torch=={torch}"}


def render(manifest: dict[str, Any]) -> str:
    """The README text for a schema-2 manifest."""
    model, task, versions = manifest["model"], manifest["task"], manifest.get("versions", {})
    method = MethodSpec.from_dict(manifest["methods"][0])
    v = manifest["validation"]
    lines = [f"# {manifest['project']['name']} for {manifest['profile']['name']}", "",
             f"`{model['file']}`: {model['format']}/{model['backend']}, {model['precision']}, built by edgekit "
             f"{versions.get('edgekit', '?')} on {manifest['created_at']}. Task: **{task['kind']}** "
             f"({task['metric']} {v['value']:.4g} on {v['n_samples']} held-out samples; the PyTorch model "
             f"{v['reference_value']:.4g}; validated "
             f"{'in its target runtime' if v['where'] == 'target-runtime' else 'on a host twin'}).",
             "", "## Inputs and outputs (method `forward`)", "", "| | name | dtype | shape |", "|---|---|---|---|"]
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
    lines += ["", f"## Run it ({runtime})", "", "```sh", INSTALL[runtime].format(**{k: versions.get(k, "?") for k in
                                                                                   ("onnxruntime", "ai-edge-litert",
                                                                                    "executorch", "torch")}),
              "```", "", "```python",
              SNIPPETS[runtime].format(file=model["file"], feeds=feeds, kwargs=kwargs, tensors=tensors), "```", "",
              "Or measure it on the device: `python -m edgekit_runner .` (latency, memory and the task's metrics on "
              "`eval.npz`), and from Python on the host: `edgekit.Bundle.open(\".\").predict({...})`.", ""]
    return "\n".join(lines)


def write_readme(staging: Path, manifest: dict[str, Any]) -> None:
    (staging / manifest["readme"]).write_text(render(manifest), encoding="utf-8")

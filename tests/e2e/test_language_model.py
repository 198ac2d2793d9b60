"""Language models end to end (issue 12): a small trained decoder (tests/conftest.py tiny_lm_project) built
with its KV cache in each format, validated against PyTorch in the format's runtime, run by the runner
(in torch-free virtualenvs for ONNX and LiteRT), benchmarked into the results store, called through the
Python API; and the bad inputs a user hits first, each refused with a one-line error."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgekit
from edgekit.cli import cli
from edgekit.lm.build import reference_greedy

pytestmark = pytest.mark.slow
FORMATS = ("executorch", "onnx", "tflite")


def _decoder(project: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_lm_project_model", project / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny().eval()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reproduces_pytorch_greedy_generation_and_perplexity(fmt, lm_built):
    m = edgekit.Bundle.open(lm_built(fmt)).manifest.data
    v, lm = m["validation"], m["language_model"]
    assert m["task"]["kind"] == "language-model" and m["model"]["format"] == fmt and v["passed"]
    met = v["metrics"]
    assert met["greedy_agreement"] == 1.0 and len(met["greedy_tokens"]) == 32
    assert met["max_abs_logit_error"] <= met["logit_tolerance"] < 1e-2
    assert abs(met["perplexity_increase"]) < 1e-4
    assert 30 < met["reference_perplexity"] < 1500  # trained: well below the vocabulary's 2,048
    cache = lm["cache"]
    assert cache["max_context"] == lm["max_context"] == 128 and cache["layers"] == 2 and cache["kv_heads"] == 2
    assert m["methods"][0]["dims"]["tokens"] == [1, 128]
    if fmt == "executorch":
        consts = lm["export"]["constant_methods"]
        assert consts["get_max_seq_len"] == 128 and consts["use_kv_cache"] and consts["get_vocab_size"] == 2048
    if fmt == "onnx":
        assert lm["export"]["inputs"][:3] == ["input_ids", "past_key_values.0.key", "past_key_values.0.value"]
        assert lm["export"]["outputs"][:2] == ["logits", "present.0.key"]
    if fmt == "tflite":
        assert set(lm["export"]["signatures"]) == {"prefill", "decode"} and cache["prefill"] == 16
    shown = CliRunner().invoke(cli, ["inspect", str(lm_built(fmt))])
    assert shown.exit_code == 0 and "context 128, KV cache:" in shown.output.replace("\n", " ")


def test_the_export_continues_any_prompt_like_pytorch(tiny_lm_project, lm_built):
    """Not only the bundle's own prompt: Bundle.generate on other text, longer than LiteRT's prefill
    signature (chunked), equals PyTorch's greedy continuation token for token."""
    model = _decoder(tiny_lm_project)
    text = "Assignment statements are used to (re)bind names to values and to modify attributes or items"
    for fmt in FORMATS:
        bundle = edgekit.Bundle.open(lm_built(fmt))
        out = bundle.generate(text, max_new_tokens=24, stop_at_eos=False)
        ids = bundle._tokenizer().encode(text).ids
        assert len(ids) > 16 and out.prompt_tokens == len(ids)
        assert out.tokens == reference_greedy(model, ids, 24), fmt
        assert str(out) == out.text and out.decode_tokens_per_s > 0
        with pytest.raises(ValueError, match="maximum context of 128"):
            bundle.generate("for " * 200)
        with pytest.raises(ValueError, match="use generate"):
            bundle.predict(np.zeros((1, 65), np.int64))


@pytest.mark.parametrize("fmt, kind", [("onnx", "onnx"), ("tflite", "litert")])
def test_the_runner_measures_a_language_model_without_torch(fmt, kind, lm_built):
    from conftest import runner_venv

    bundle = lm_built(fmt)
    proc = subprocess.run([str(runner_venv(kind)), "-m", "edgekit_runner", str(bundle), "--runs", "3",
                           "--min-seconds", "0", "--warmup-seconds", "0"], capture_output=True, text=True,
                          timeout=600, cwd=bundle)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["status"] == "OK", (report.get("error"), proc.stderr[-500:])
    met = report["metrics"]
    ref = edgekit.Bundle.open(bundle).manifest.data["language_model"]["reference_perplexity"]
    assert met["task"] == "language-model" and met["greedy_agreement"] == 1.0
    assert met["perplexity"] == pytest.approx(ref, rel=1e-4) and met["eval_tokens"] == 16 * 64
    assert met["decode_tokens_per_s"] > 0 and met["time_to_first_token_ms"] > 0
    assert sorted(met["prefill"], key=int) == ["8", "32", "64"]
    assert all(p["tokens_per_s"] > 0 for p in met["prefill"].values())
    assert report["latency_ms"]["per"] == "decoded token" and report["memory"]["peak_rss_run_mb"] > 0


def test_bench_stores_the_language_model_figures(lm_built, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["bench", str(lm_built("executorch")), "--on", "local", "--",
                                      "--runs", "3", "--min-seconds", "0", "--warmup-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output and "time to first token" in result.output
    from edgekit.results.store import ResultsStore

    run = ResultsStore(tmp_path / "results.db").list_runs()[0]
    stored = run.metrics
    assert stored["decode_tokens_per_s"] > 0 and stored["time_to_first_token_ms"] > 0
    assert stored["greedy_agreement"] == 1.0 and stored["perplexity"] > 1
    assert run.peak_rss_mb > 0


def _build(project: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["build", "--device", "pixel8", "--project", str(project), "--out", str(out),
                                    *extra])


def _variant(tiny_lm_project: Path, tmp_path: Path, old: str, new: str) -> Path:
    folder = tmp_path / "project"
    shutil.copytree(tiny_lm_project, folder)
    toml = folder / "edgekit.toml"
    assert old in toml.read_text()
    toml.write_text(toml.read_text().replace(old, new))
    return folder


def test_a_prompt_longer_than_the_context_is_refused_before_export(tiny_lm_project, tmp_path):
    project = _variant(tiny_lm_project, tmp_path, 'prompt = "The for', 'prompt = "' + "for " * 120 + 'The for')
    result = _build(project, tmp_path / "out")
    assert result.exit_code == 2 and "do not fit max_context = 128" in result.output
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_that_does_not_match_the_vocabulary_is_refused(tiny_lm_project, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    project = _variant(tiny_lm_project, tmp_path, 'tokenizer = "tokenizer.json"', 'tokenizer = "other.json"')
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["some other text " * 50 + str(i) for i in range(3000)],
                            trainers.BpeTrainer(vocab_size=4096, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(project / "other.json"))
    assert tok.get_vocab_size() > 2048
    result = _build(project, tmp_path / "out")
    assert result.exit_code == 2 and "more than the model's vocabulary of 2048" in result.output


def test_an_hf_folder_of_an_unsupported_architecture_is_refused_by_name(tiny_lm_project, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=2048)).save_pretrained(folder)
    shutil.copy2(tiny_lm_project / "tokenizer.json", folder / "tokenizer.json")
    project = _variant(tiny_lm_project, tmp_path, 'entry = "model.py:tiny"', f'hf = "{folder}"')
    result = _build(project, tmp_path / "out")
    assert result.exit_code == 2
    assert "architecture GPT2LMHeadModel is not supported for language models" in result.output
    assert "LlamaForCausalLM" in result.output


def test_a_transformers_llama_folder_builds_and_matches_transformers(tiny_lm_project, tmp_path):
    """[model] hf = a folder saved by transformers' LlamaForCausalLM: edgekit's decoder computes the same
    logits as transformers, and the build exports it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekit.lm.model import load_folder

    torch.manual_seed(0)
    hf_model = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                            max_position_embeddings=128, rope_theta=50000.0,
                                            tie_word_embeddings=True)).eval()
    folder = tmp_path / "llama"
    hf_model.save_pretrained(folder)
    shutil.copy2(tiny_lm_project / "tokenizer.json", folder / "tokenizer.json")
    ids = torch.randint(0, 2048, (2, 40))
    with torch.no_grad():
        ours, theirs = load_folder(folder)(ids), hf_model(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    project = _variant(tiny_lm_project, tmp_path, 'entry = "model.py:tiny"', f'hf = "{folder}"')
    result = _build(project, tmp_path / "out", "--format", "onnx")
    assert result.exit_code == 0, result.output
    assert edgekit.Bundle.open(tmp_path / "out").manifest.data["validation"]["metrics"]["greedy_agreement"] == 1.0


def test_the_bundle_readme_snippet_generates(lm_built, tmp_path):
    """The README every LM bundle carries: its generation snippet runs as written, in the bundle folder."""
    import re
    import sys

    bundle = Path(shutil.copytree(lm_built("onnx"), tmp_path / "bundle"))
    readme = (bundle / "README.md").read_text()
    assert "past_key_values.N.key" in readme and "maximum context 128 tokens" in readme
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-800:]

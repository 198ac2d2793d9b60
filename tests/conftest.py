"""Shared fixtures: the repo root project, a tiny model, cached builds, torch-free runner venvs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER_VENVS = ROOT / ".venv-runners"
# What a board has: numpy and one runtime, no torch, no edgekit.
RUNNER_VENV_PACKAGES = {
    "onnx": ["numpy", "onnxruntime==1.32.0"],
    "tflite": ["numpy<2", "tflite-runtime==2.14.0"],
    "litert": ["numpy", "ai-edge-litert==2.3.0"],  # what a board needs for transformer exports (see test_embedding)
}


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEKIT_PROFILES_DIR", raising=False)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory):
    """build(device, **options) -> bundle path; each distinct build runs once per session."""
    from click.testing import CliRunner

    from edgekit.cli import cli

    cache: dict[tuple, Path] = {}
    base = tmp_path_factory.mktemp("bundles")

    def build(device: str, *extra: str) -> Path:
        """Without --quant: the fp32 bundle (--quant none; the CLI's default is the profile's scheme).
        Without --distill: --no-distill (most tests are about export and quantization, not distillation)."""
        extra = extra if "--quant" in extra else (*extra, "--quant", "none")
        extra = extra if {"--distill", "--no-distill"} & set(extra) else (*extra, "--no-distill")
        key = (device, *extra)
        if key not in cache:
            out = base / "-".join(key).replace("/", "_")
            result = CliRunner().invoke(cli, ["build", "--device", device, "--project", str(ROOT),
                                              "--out", str(out), *extra], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            cache[key] = out
        return cache[key]

    return build


def runner_venv(kind: str) -> Path:
    """A virtualenv with only numpy and one runtime (created once, kept in .venv-runners/)."""
    venv = RUNNER_VENVS / kind
    python = venv / "bin" / "python"
    stamp = venv / ".ready"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *RUNNER_VENV_PACKAGES[kind]], check=True,
                       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        stamp.touch()
    return python


TINY_LM_TOML = """schema_version = 1
name = "tiny-lm-test"
outputs = ["logits"]

[task]
kind = "language-model"

[model]
entry = "model.py:tiny"

[data]
entry = "data.py:windows"

[language_model]
tokenizer = "tokenizer.json"
prompt = "The for statement is used to iterate over the elements of a sequence"
max_context = 128
prefill = 16
new_tokens = 32
eval_windows = 16
prefill_lengths = [8, 32, 64]

[[inputs]]
name = "tokens"
shape = [1, 65]
dtype = "int64"
"""
TINY_LM_MODEL = '''from pathlib import Path

from safetensors.torch import load_file

from edgekit.lm.model import Decoder, DecoderConfig

CONFIG = DecoderConfig(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128, eos_token_id=0)


def tiny():
    model = Decoder(CONFIG)
    model.load_hf_state_dict(load_file(str(Path(__file__).with_name("weights.safetensors"))))
    return model
'''
TINY_LM_DATA = '''import importlib.util
from pathlib import Path


def windows():
    # examples/tiny_lm/data.py, copied beside this file; loaded by path (other examples have a data.py too)
    spec = importlib.util.spec_from_file_location("tiny_lm_copy_data", Path(__file__).parent / "tiny_lm" / "data.py")
    data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data)
    return {k: {"tokens": v["tokens"][:200]} for k, v in data.load_splits(64).items()}
'''


@pytest.fixture(scope="session")
def tiny_lm_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A language-model project: a 2-layer decoder of edgekit.lm (grouped-query attention, tied embeddings,
    vocabulary 2,048) trained for 150 steps on examples/tiny_lm's text with its tokenizer: a real, if small,
    language model (eval perplexity a few hundred), made in seconds."""
    import importlib.util

    import torch
    from safetensors.torch import save_file
    from torch.nn import functional as F

    folder = tmp_path_factory.mktemp("tiny-lm-project")
    shutil.copytree(ROOT / "examples" / "tiny_lm", folder / "tiny_lm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "examples" / "tiny_lm" / "tokenizer.json", folder / "tokenizer.json")
    (folder / "edgekit.toml").write_text(TINY_LM_TOML)
    (folder / "model.py").write_text(TINY_LM_MODEL)
    (folder / "data.py").write_text(TINY_LM_DATA)
    spec = importlib.util.spec_from_file_location("tiny_lm_test_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data_spec = importlib.util.spec_from_file_location("tiny_lm_test_text", ROOT / "examples" / "tiny_lm" / "data.py")
    text = importlib.util.module_from_spec(data_spec)
    data_spec.loader.exec_module(text)
    train = torch.from_numpy(text.load_splits(64)["train"]["tokens"])
    from edgekit.lm.model import Decoder

    torch.manual_seed(0)
    model = Decoder(module.CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = train[torch.randint(len(train), (16,), generator=gen)]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_file(model.hf_state_dict(), str(folder / "weights.safetensors"))
    return folder


@pytest.fixture(scope="session")
def lm_built(tiny_lm_project: Path, tmp_path_factory: pytest.TempPathFactory):
    """lm_built(format) -> the tiny language model's fp32 bundle for pixel8 in that format, built once."""
    from click.testing import CliRunner

    from edgekit.cli import cli

    cache: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("lm-bundles")

    def build(fmt: str) -> Path:
        if fmt not in cache:
            out = base / fmt
            result = CliRunner().invoke(cli, ["build", "--device", "pixel8", "--format", fmt, "--project",
                                              str(tiny_lm_project), "--out", str(out)], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            cache[fmt] = out
        return cache[fmt]

    return build

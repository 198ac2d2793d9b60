"""Shared fixtures: the repo root project, a tiny model, cached builds, torch-free runner venvs."""

from __future__ import annotations

import os
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

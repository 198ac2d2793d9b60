"""Fixtures for the reliability tests (issue 10): real bundles to damage, a private $EDGEKIT_HOME."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own $EDGEKIT_HOME, and no token from the environment."""
    home = tmp_path / "edgekit-home"
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    monkeypatch.delenv("EDGEKIT_TOKEN", raising=False)
    return home


@pytest.fixture(scope="session")
def onnx_bundle(built) -> Path:
    """A real fp32 ONNX bundle (jetson-orin-nano's default path; runs in ONNX Runtime's CPU EP here)."""
    return built("jetson-orin-nano")


@pytest.fixture
def bundle_copy(onnx_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the ONNX bundle that a test may damage."""
    return Path(shutil.copytree(onnx_bundle, tmp_path / "bundle"))

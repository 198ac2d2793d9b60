"""The wheel carries every package: an editable install hides a subpackage missing from pyproject.toml
(edgekit_runner.tasks was, once), and bundles copy the runner from the installed package."""

from __future__ import annotations

import tomllib

from setuptools import find_packages


def test_every_package_is_listed_in_pyproject(root):
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {p for p in find_packages(str(root), include=["edgekit", "edgekit.*"])}
    found |= {p for p in find_packages(str(root / "targets" / "runner"), include=["edgekit_runner*"])}
    found |= {"edgekit.device_profiles"}
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; stale: {sorted(listed - found)}"

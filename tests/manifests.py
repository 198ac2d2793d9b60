"""A complete, valid bundle manifest (schema 1) for tests that write bundles by hand."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

BASE: dict[str, Any] = {
    "schema_version": 1, "kind": "edgekit-bundle", "created_at": "2026-01-01T00:00:00Z",
    "profile": {"id": "pixel8", "name": "Google Pixel 8"},
    "project": {"name": "test", "task": "classification", "metric": "accuracy"},
    "plan": {"quant": "int8"},
    "model": {"file": "model.pte", "format": "executorch", "backend": "xnnpack", "runtime": "executorch",
              "runtime_target": "XnnpackBackend", "precision": "int8", "bytes": 0,
              "inputs": [{"name": "image", "shape": [1, 4], "dtype": "float32"}],
              "outputs": [{"name": "logits", "shape": [1, 3], "dtype": "float32"}]},
    "eval": {"file": "eval.npz", "n_samples": 0, "arrays": {}},
    "files": {},
    "validation": {"where": "target-runtime", "runtime": {"runtime": "executorch"}, "metric": "accuracy",
                   "value": 0.97},
    "versions": {"executorch": "1.5.1"},
}


def manifest(**sections: Any) -> dict[str, Any]:
    """The base manifest with whole sections replaced (``model={...}``) or merged (``model__file="x"``)."""
    m = copy.deepcopy(BASE)
    for key, value in sections.items():
        if "__" in key:
            section, field = key.split("__", 1)
            m[section][field] = value
        else:
            m[key] = value
    return m


def list_files(m: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """``m`` with ``files`` listing every file in ``bundle`` (sha256 and size), and the eval arrays' shapes."""
    import numpy as np

    m = copy.deepcopy(m)
    m["files"] = {p.relative_to(bundle).as_posix(): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                                     "bytes": p.stat().st_size}
                  for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    eval_file = bundle / m["eval"]["file"]
    if eval_file.is_file() and eval_file.stat().st_size:
        with np.load(eval_file) as npz:
            m["eval"]["arrays"] = {k: list(npz[k].shape) for k in npz.files}
            m["eval"]["n_samples"] = len(npz[npz.files[0]])
    return m

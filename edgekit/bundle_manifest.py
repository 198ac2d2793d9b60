"""What a bundle says about itself: the manifest (schema 2) composed from the build's typed artifacts, the
versions of the tools that made it, and the runner copied in beside the model. Shared by every build
(:mod:`edgekit.pipeline`, :mod:`edgekit.lm.build`)."""

from __future__ import annotations

import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from edgekit_runner.manifest import MethodSpec, TensorSpec

import edgekit
from edgekit.bundle import SCHEMA_VERSION
from edgekit.prune import compressed_bytes

VERSIONED = ("torch", "executorch", "torchao", "onnx", "onnxscript", "onnxruntime", "litert-torch",
             "ai-edge-litert", "numpy")


def tool_versions() -> dict[str, str]:
    versions = {"edgekit": edgekit.__version__, "python": platform.python_version()}
    for dist in VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def compose_manifest(profile: Any, project: Any, plan: Any, model_path: Path, output_names: list[str],
                     reference: list[np.ndarray], arrays: dict[str, np.ndarray], result: Any, validation: Any,
                     baseline: tuple[Any, Any] | None, warnings: list[str],
                     distilled: dict[str, Any] | None, tokenizer: dict[str, Any] | None,
                     pruned: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the bundle says about itself (schema 2; file hashes are added when it is committed)."""
    batch = project.inputs[0].shape[0]
    dtypes = artifact_dtypes(project, validation)
    forward = MethodSpec("forward", tuple(TensorSpec(i.name, dtypes[i.name], tuple(i.shape)) for i in project.inputs),
                         tuple(TensorSpec(n, str(r.dtype), (batch, *r.shape[1:]))
                               for n, r in zip(output_names, reference)))
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "edgekit-bundle",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": {"id": profile.id, "name": profile.name, "soc": profile.soc,
                    "schema_version": profile.schema_version, "budgets": profile.budgets.model_dump()},
        "project": {"name": project.name, "model_entry": project.model.source},
        "task": project.task.options(),
        "plan": plan.model_dump(),
        "model": {
            "file": model_path.name, "format": plan.format, "backend": plan.backend,
            "runtime": plan.runtime, "runtime_target": plan.runtime_target, "precision": plan.precision,
            "bytes": model_path.stat().st_size, "export_details": result.details,
            "compressed_bytes": compressed_bytes(model_path),  # deflated, as a zip or an APK stores it
        },
        "methods": [forward.to_dict()],
        "eval": {"file": "eval.npz", "n_samples": len(reference[0]),
                 "arrays": {k: list(a.shape) for k, a in arrays.items()}},
        "tokenizer": tokenizer,
        "readme": "README.md",
        "runner": {"package": "edgekit_runner", "command": "python -m edgekit_runner ."},
        "distill": distilled,
        "prune": pruned,
        "validation": validation.to_dict(),
        "baseline": None if baseline is None else {
            "precision": "fp32", "bytes": baseline[0].model_path.stat().st_size,
            "validation": baseline[1].to_dict()},
        "warnings": warnings,
        "versions": tool_versions(),
        "seed": project.seed,
    }


def artifact_dtypes(project: Any, validation: Any) -> dict[str, str]:
    """Each input's dtype as the artifact takes it: the declared one, except where the runtime narrowed an
    integer input (LiteRT converts int64 ids to int32), so that an app feeding the contract's dtype works."""
    runtime = validation.runtime_io.get("inputs", [])
    dtypes = {i.name: i.dtype for i in project.inputs}
    if len(runtime) == len(project.inputs):
        for inp, rt in zip(project.inputs, runtime):
            if np.dtype(inp.dtype).kind in "iu" and np.dtype(rt["dtype"]).kind in "iu" and rt["dtype"] != inp.dtype:
                dtypes[inp.name] = rt["dtype"]
    return dtypes


def copy_runner(dest: Path) -> None:
    import edgekit_runner

    shutil.copytree(Path(edgekit_runner.__file__).parent, dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

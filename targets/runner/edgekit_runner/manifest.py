"""The bundle manifest: one schema, checked by every reader (the runner, ``edgekit inspect``, ``bench``, the
results store). Stdlib only: this runs on the device.

A manifest is untrusted data: a bundle may come from anywhere, and a device may have cut it short or
changed it. :func:`read_manifest` therefore refuses, with one line that names the field, anything that is
not what ``edgekit build`` writes: a file over :data:`MAX_BYTES` or not a regular file, JSON that is
not standard or beyond :mod:`edgekit_runner.safejson`'s limits, a missing key, a value of the wrong
type, an integer outside int64, a path that is absolute or climbs out of the bundle, a sha256 that is
not 64 hex digits. Keys the schema does not know are kept (a newer edgekit of the same schema version
may add facts).

The typed contract (schema 2): a bundle's program has one or more **methods** (``forward``; a language
model's ``prefill`` / ``decode`` ...), each a :class:`MethodSpec` of named :class:`TensorSpec` inputs and
outputs whose shapes may name dynamic dimensions with bounds; the **task** (classification, embedding,
...) says how the eval set is scored (:mod:`edgekit_runner.tasks`). ``eval.npz`` holds each input as
``input.NAME``, the PyTorch reference of each output as ``reference.NAME``, and the task's own arrays
(``labels``). Schema-1 bundles (one float input, one output, ``inputs`` / ``reference`` / ``labels``)
are read into the same objects.

>>> manifest = read_manifest(Path("build/pixel8"))   # doctest: +SKIP
>>> manifest.model_file, manifest.runtime, manifest.forward.inputs[0].name  # doctest: +SKIP
('model.pte', 'executorch', 'image')
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit_runner import safejson
from edgekit_runner.files import UnsafeFile, describe_error, read_regular

NAME = "manifest.json"
KIND = "edgekit-bundle"
SCHEMA_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MAX_BYTES = 16 << 20
INT64 = (-(1 << 63), (1 << 63) - 1)
RUNTIMES = ("executorch", "onnxruntime", "litert")
FORMATS = ("executorch", "onnx", "tflite")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
INPUT, REFERENCE = "input.", "reference."  # eval.npz key prefixes (schema 2)


class ManifestError(ValueError):
    """The manifest is missing, unreadable or not a manifest this runner knows; the message is one line."""


# ------------------------------------------------------------------ the schema
# A schema is a type name ("str", "int", "count", "num", "bool", "sha256", "relpath", "any"), a dict
# {key: schema} (a key ending in "?" may be absent), a list [schema] (every item), Map(schema) (an
# object of any keys), OneOf(values), or Null(schema) (that schema or null).

@dataclass(frozen=True)
class Map:
    value: Any


@dataclass(frozen=True)
class OneOf:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Null:
    schema: Any


TENSOR = {"name": "str", "shape": ["int"], "dtype": "str"}
VALIDATION = {"where": "str", "runtime": Map("any"), "metric?": Null("str"), "value?": Null("num"),
              "max_abs_error?": Null("num"), "top1_agreement?": Null("num"), "n_samples?": "count",
              "passed?": "bool", "reference_value?": Null("num"), "accuracy_drop?": Null("num")}
SCHEMA: dict[str, Any] = {
    "schema_version": "int",
    "kind": OneOf((KIND,)),
    "created_at": "str",
    "profile": {"id": "str", "name": "str", "soc?": "str", "schema_version?": "int", "budgets?": Map(Null("num"))},
    "project": {"name": "str", "task": "str", "metric?": Null("str"), "model_entry?": "str"},
    "plan?": {"quant?": Null("str")},
    "model": {"file": "relpath", "format": OneOf(FORMATS), "backend": "str", "runtime": OneOf(RUNTIMES),
              "runtime_target?": Null("str"), "precision": "str", "bytes": "count",
              "inputs": [TENSOR], "outputs": [TENSOR], "export_details?": Map("any")},
    "eval": {"file": "relpath", "n_samples": "count", "arrays": Map(["count"])},
    "files": Map({"sha256": "sha256", "bytes": "count"}),
    "validation?": Null(VALIDATION),
    "baseline?": Null({"precision": "str", "bytes": "count", "validation": VALIDATION}),
    "warnings?": ["str"],
    "versions?": Map("str"),
    "seed?": "int",
    "timings_s?": Map("num"),
}


TENSOR_2 = {"name": "name", "dtype": OneOf(DTYPES), "shape": ["dim"]}
METHOD = {"name": "name", "inputs": [TENSOR_2], "outputs": [TENSOR_2], "dims?": Map("bounds")}
SCHEMA_2: dict[str, Any] = {
    **{k: v for k, v in SCHEMA.items() if k not in ("project", "model", "eval")},
    "project": {"name": "str", "model_entry?": Null("str")},
    "task": {"kind": "name", "metric?": Null("str")},
    "model": {"file": "relpath", "format": OneOf(FORMATS), "backend": "str", "runtime": OneOf(RUNTIMES),
              "runtime_target?": Null("str"), "precision": "str", "bytes": "count", "export_details?": Map("any")},
    "methods": [METHOD],
    "eval": {"file": "relpath", "n_samples": "count", "arrays": Map(["count"])},
    "tokenizer?": Null({"file": "relpath", "kind": "str"}),
    "readme?": Null("relpath"),
}


def check(value: Any, schema: Any, where: str = "manifest") -> None:
    """Raise ManifestError naming the first place where ``value`` does not fit ``schema``."""
    if isinstance(schema, Null):
        if value is not None:
            check(value, schema.schema, where)
    elif isinstance(schema, OneOf):
        if value not in schema.values or isinstance(value, bool):
            raise ManifestError(f"{where} is {_show(value)}; expected one of {', '.join(map(repr, schema.values))}")
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ManifestError(f"{where} is {_show(value)}; expected an object")
        for key, sub in schema.items():
            name, optional = key.rstrip("?"), key.endswith("?")
            if name in value:
                check(value[name], sub, f"{where}.{name}")
            elif not optional:
                raise ManifestError(f"{where} has no {name!r}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ManifestError(f"{where} is {_show(value)}; expected a list")
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
    elif isinstance(schema, Map):
        if not isinstance(value, dict):
            raise ManifestError(f"{where} is {_show(value)}; expected an object")
        for key, item in value.items():
            check(item, schema.value, f"{where}[{key[:80]!r}]")
    elif not _SCALARS[schema](value):
        raise ManifestError(f"{where} is {_show(value)}; expected {_EXPECTED[schema]}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and INT64[0] <= v <= INT64[1]


def relpath_ok(v: Any) -> bool:
    """A relative POSIX path inside its folder: no absolute path, no '..', no empty or odd component."""
    if not isinstance(v, str) or not v or len(v) > 1024 or "\\" in v or "\0" in v:
        return False
    p = PurePosixPath(v)
    return not p.is_absolute() and all(part not in ("", ".", "..") for part in v.split("/"))


_SCALARS = {
    "any": lambda v: True,
    "str": lambda v: isinstance(v, str),
    "int": _int,
    "count": lambda v: _int(v) and v >= 0,
    "num": lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)) and abs(v) < 1e300,
    "bool": lambda v: isinstance(v, bool),
    "sha256": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
    "relpath": relpath_ok,
    "name": lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}", v) is not None,
    "dim": lambda v: (_int(v) and v >= 0) or (isinstance(v, str) and re.fullmatch(r"[A-Za-z_]\w{0,63}", v) is not None),
    "bounds": lambda v: isinstance(v, list) and len(v) == 2 and all(_int(x) and x >= 0 for x in v),
}
_EXPECTED = {"any": "anything", "str": "a string", "int": "an integer (int64)",
             "count": "a non-negative integer (int64)", "num": "a finite number", "bool": "true or false",
             "sha256": "64 lowercase hex digits", "relpath": "a relative path inside the bundle (no '..')",
             "name": "a name (letters, digits, _ . : -)", "dim": "a size >= 0 or the name of a dynamic dimension",
             "bounds": "[min, max], two sizes >= 0"}


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'list' if isinstance(value, list) else 'object'} of {len(value)}"
    text = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: dtype and shape, where a dimension is a size or the name of a dynamic
    dimension declared (with its bounds) by the method."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class MethodSpec:
    """One entry point of the program: its inputs and outputs in call order, and its dynamic dimensions
    with their (min, max) bounds."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs], "dims": {k: list(v) for k, v in self.dims.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodSpec:
        return cls(d["name"], tuple(map(TensorSpec.from_dict, d["inputs"])),
                   tuple(map(TensorSpec.from_dict, d["outputs"])),
                   {k: (int(v[0]), int(v[1])) for k, v in d.get("dims", {}).items()})


@dataclass(frozen=True)
class Manifest:
    """A checked manifest. ``data`` is the whole document (as written, schema 1 or 2); the properties give
    both schemas the same typed face."""

    data: dict[str, Any]

    @property
    def schema_version(self) -> int:
        return self.data["schema_version"]

    @property
    def model_file(self) -> str:
        return self.data["model"]["file"]

    @property
    def eval_file(self) -> str:
        return self.data["eval"]["file"]

    @property
    def runtime(self) -> str:
        return self.data["model"]["runtime"]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.data["files"]

    @property
    def task(self) -> str:
        """The task kind (schema-1 bundles are all classifiers)."""
        return self.data["task"]["kind"] if self.schema_version >= 2 else self.data["project"].get(
            "task", "classification")

    @property
    def task_options(self) -> dict[str, Any]:
        """The manifest's task section: kind, metric and the task's own settings (thresholds...)."""
        if self.schema_version >= 2:
            return dict(self.data["task"])
        return {"kind": self.task, "metric": self.data["project"].get("metric", "accuracy")}

    @property
    def methods(self) -> tuple[MethodSpec, ...]:
        if self.schema_version >= 2:
            return tuple(MethodSpec.from_dict(m) for m in self.data["methods"])
        model = self.data["model"]
        return (MethodSpec("forward", tuple(map(TensorSpec.from_dict, model["inputs"])),
                           tuple(map(TensorSpec.from_dict, model["outputs"]))),)

    @property
    def forward(self) -> MethodSpec:
        """The method the runner measures and the eval set exercises: ``forward``, else the first."""
        return next((m for m in self.methods if m.name == "forward"), self.methods[0])

    @property
    def eval_arrays(self) -> dict[str, tuple[int, ...]]:
        """eval.npz key -> shape, as declared."""
        return {name: tuple(shape) for name, shape in self.data["eval"]["arrays"].items()}

    @property
    def eval_inputs(self) -> dict[str, str]:
        """Input name -> its eval.npz key (schema 1: the one input is ``inputs``)."""
        if self.schema_version >= 2:
            return {t.name: INPUT + t.name for t in self.forward.inputs}
        return {t.name: "inputs" for t in self.forward.inputs[:1]}

    @property
    def eval_references(self) -> dict[str, str]:
        """Output name -> the eval.npz key of its PyTorch reference (schema 1: the first output, ``reference``)."""
        if self.schema_version >= 2:
            return {t.name: REFERENCE + t.name for t in self.forward.outputs
                    if REFERENCE + t.name in self.data["eval"]["arrays"]}
        return {t.name: "reference" for t in self.forward.outputs[:1] if "reference" in self.data["eval"]["arrays"]}

    @property
    def tokenizer_file(self) -> str | None:
        tok = self.data.get("tokenizer")
        return tok["file"] if tok else None

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True, allow_nan=False)


def validate(data: Any, source: str = NAME) -> Manifest:
    """Check a decoded manifest: its schema version first (a newer one names both versions), then every field,
    then that what the fields name agrees (eval arrays for every input, dims that are declared)."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source} holds {_show(data)}, not a manifest object")
    version = data.get("schema_version")
    if not _int(version) or version not in SUPPORTED_VERSIONS:
        newer = _int(version) and version > max(SUPPORTED_VERSIONS)
        raise ManifestError(f"{source}: bundle schema_version {_show(version)} is not supported (this reader knows "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
                            + ("; upgrade edgekit to read it" if newer else ""))
    if data.get("kind") != KIND:
        raise ManifestError(f"{source} was not written by edgekit (kind is {_show(data.get('kind'))}, "
                            f"not {KIND!r})")
    try:
        check(data, SCHEMA if version == 1 else SCHEMA_2, "manifest")
    except ManifestError as e:
        raise ManifestError(f"{source}: {e}") from None
    for key in data["files"]:
        if not relpath_ok(key):
            raise ManifestError(f"{source}: files lists {_show(key)}, which is not a relative path inside the bundle")
    manifest = Manifest(data)
    if version >= 2:
        _check_methods(manifest, source)
    return manifest


def _check_methods(manifest: Manifest, source: str) -> None:
    names = [m.name for m in manifest.methods]
    if not names or len(set(names)) != len(names):
        raise ManifestError(f"{source}: methods must be one or more, each named once (got {names})")
    for m in manifest.methods:
        if not m.inputs or not m.outputs:
            raise ManifestError(f"{source}: method {m.name!r} needs at least one input and one output")
        io = [t.name for t in (*m.inputs, *m.outputs)]
        if len(set(io)) != len(io):
            raise ManifestError(f"{source}: method {m.name!r} names a tensor twice ({io})")
        for lo, hi in m.dims.values():
            if not 0 <= lo <= hi:
                raise ManifestError(f"{source}: method {m.name!r} has a dimension with bounds [{lo}, {hi}]")
        for t in (*m.inputs, *m.outputs):
            unknown = [d for d in t.shape if isinstance(d, str) and d not in m.dims]
            if unknown:
                raise ManifestError(f"{source}: {m.name}.{t.name} has dimension {unknown[0]!r}, which the method "
                                    "does not declare in dims")
    missing = [key for key in manifest.eval_inputs.values() if key not in manifest.eval_arrays]
    if missing:
        raise ManifestError(f"{source}: eval.arrays has no {missing[0]!r} for the forward method's input")


def read_manifest(bundle: Path) -> Manifest:
    """Read and check ``bundle/manifest.json``; ManifestError (one line) if it is not a manifest this code knows."""
    path = Path(bundle) / NAME
    try:
        raw = read_regular(path, MAX_BYTES)
    except FileNotFoundError:
        raise ManifestError(f"no {NAME} in {bundle}: not a bundle (make one with `edgekit build`)") from None
    except (UnsafeFile, OSError) as e:
        raise ManifestError(f"cannot read {path}: {describe_error(e)}") from None
    try:
        data = safejson.loads(raw, str(path))
    except safejson.JsonError as e:
        raise ManifestError(str(e)) from None
    return validate(data, str(path))

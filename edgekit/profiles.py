"""Device profiles: what a phone or board is, what its compute units run, and its budgets.

A profile is data: one TOML file in ``device_profiles/`` (or in a folder of the
user's, given by ``--profiles-dir`` or ``EDGEKIT_PROFILES_DIR``). It is parsed
into a frozen, validated :class:`DeviceProfile`; a bad file gets a
:class:`~edgekit.errors.ProfileError` naming the file, the field and what is
allowed.

>>> from edgekit.profiles import load_profile
>>> load_profile("pixel8").default.backend
'xnnpack'
"""

from __future__ import annotations

import difflib
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.errors import ProfileError
from edgekit.fsutil import read_toml

SCHEMA_VERSION = 1
PROFILES_ENV = "EDGEKIT_PROFILES_DIR"

def _builtin_dir() -> Path:
    """device_profiles/ at the repo root, shipped in the wheel as package data edgekit.device_profiles."""
    from importlib.util import find_spec

    spec = find_spec("edgekit.device_profiles")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    return Path(__file__).resolve().parent.parent / "device_profiles"


BUILTIN_DIR = _builtin_dir()

Precision = Literal["fp32", "fp16", "int8", "int16", "int4-weight", "int8-weight"]
Format = Literal["executorch", "onnx", "tflite"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TargetPath(_Frozen):
    """One way to run a model on a compute unit: a format and its backend."""

    format: Format
    backend: str
    precisions: tuple[Precision, ...] = Field(min_length=1)
    note: str = ""

    @model_validator(mode="after")
    def _known_backend(self) -> TargetPath:
        from edgekit.export import known_backends  # declarations only, no runtimes

        allowed = known_backends()[self.format]
        if self.backend not in allowed:
            raise ValueError(
                f"backend {self.backend!r} is not known for format {self.format!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        return self


class ComputeUnit(_Frozen):
    kind: Literal["cpu", "gpu", "npu"]
    name: str
    paths: tuple[TargetPath, ...] = Field(min_length=1)


class DefaultPath(_Frozen):
    format: Format
    backend: str
    # The scheme the profile recommends; quantization support lands separately.
    quant: Literal["none", "int8", "int8-dynamic", "int8-weight-only", "int4-weight-only", "fp16", "mixed"]


class QuantRule(_Frozen):
    """What a backend's quantized kernels accept (used by the quantization stage)."""

    format: Format
    backend: str
    weights: str
    activations: str
    granularity: Literal["per-tensor", "per-channel", "per-group"]
    symmetric_weights: bool = True
    io: str = "float"
    note: str = ""


class Budgets(_Frozen):
    max_model_mb: float = Field(gt=0, allow_inf_nan=False)
    max_peak_memory_mb: float = Field(gt=0, allow_inf_nan=False)
    p90_latency_ms: float = Field(gt=0, allow_inf_nan=False)
    max_accuracy_drop: float = Field(ge=0, allow_inf_nan=False, description="percentage points vs the fp32 reference")
    # language models (optional: a profile without them checks none)
    min_decode_tokens_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_time_to_first_token_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class Qnn(_Frozen):
    """A Qualcomm NPU as QNN names it: another Snapdragon is another profile TOML with its own numbers."""

    chip: str = Field(description="the SoC's part number, e.g. SM8650")
    soc_model: int = Field(gt=0, description="QNN's SoC model id (SM8650: 57)")
    htp_arch: int = Field(ge=68, description="Hexagon HTP architecture (v75: 75)")


class CpuIsa(_Frozen):
    """What the CPU cores implement, and the QEMU CPU model that emulates them (``edgekit bench --on emu:``)."""

    arch: str = Field(description="the cores' architecture version, e.g. armv8.2-a")
    features: tuple[str, ...] = Field(description="ISA features as Linux's /proc/cpuinfo names them "
                                      "(asimddp: dot product, i8mm, bf16, sve2, sme, ...)")
    qemu_cpu: str = Field(pattern=r"^[a-z0-9][a-z0-9,=.-]*$",
                          description="QEMU's -cpu model with the same features (qemu-aarch64 -cpu help)")


class DeviceProfile(_Frozen):
    """A device, frozen and validated. Built from one TOML file."""

    schema_version: Literal[1]
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str
    vendor: str
    soc: str
    os: Literal["android", "ios", "linux", "macos", "windows"]
    arch: Literal["arm64", "x86_64"]
    cpu: str
    cpu_cores: int = Field(gt=0)
    memory_gb: float = Field(gt=0)
    transport: Literal["adb", "ssh", "local"]
    compute_units: tuple[ComputeUnit, ...] = Field(min_length=1)
    default: DefaultPath
    quantization: tuple[QuantRule, ...] = ()
    budgets: Budgets
    cpu_isa: CpuIsa | None = None  # arm64 Linux/Android: what QEMU must emulate to run its kernels
    qnn: Qnn | None = None  # a Qualcomm HTP: the onnx/qnn and tflite/qnn paths compile for it, validated on its emulator
    notes: str = ""

    @model_validator(mode="after")
    def _default_is_a_path(self) -> DeviceProfile:
        if (self.default.format, self.default.backend) not in {(p.format, p.backend) for _, p in self.paths()}:
            raise ValueError(
                f"default {self.default.format}/{self.default.backend} is not one of the compute units' paths"
            )
        qnn_paths = [f"{p.format}/qnn" for _, p in self.paths() if p.backend == "qnn"]
        if qnn_paths and self.qnn is None:
            raise ValueError(f"a profile with the {' and '.join(qnn_paths)} path needs a [qnn] table "
                             "(chip, soc_model, htp_arch)")
        return self

    def paths(self) -> list[tuple[ComputeUnit, TargetPath]]:
        """Every (compute unit, path) pair, in file order."""
        return [(cu, p) for cu in self.compute_units for p in cu.paths]

    def find_path(self, fmt: str, backend: str) -> tuple[ComputeUnit, TargetPath] | None:
        for cu, p in self.paths():
            if p.format == fmt and p.backend == backend:
                return cu, p
        return None


class ProfileRegistry:
    """All profiles visible from the given folders; later folders override earlier ones."""

    def __init__(self, extra_dirs: list[Path] | None = None):
        dirs = [BUILTIN_DIR]
        env = os.environ.get(PROFILES_ENV, "")
        dirs += [Path(d) for d in env.split(os.pathsep) if d]
        dirs += [Path(d) for d in (extra_dirs or [])]
        for d in dirs[1:]:
            if not d.is_dir():
                raise ProfileError(f"profiles folder {d} does not exist")
        self.dirs = dirs

    @cached_property
    def files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for d in self.dirs:
            for f in sorted(d.glob("*.toml")):
                found[f.stem] = f
        return found

    def names(self) -> list[str]:
        return sorted(self.files)

    def load(self, name: str) -> DeviceProfile:
        if name not in self.files:
            close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.3)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ProfileError(
                f"unknown device {name!r}.{hint} Known devices: {', '.join(self.names())}"
                f" (add your own with --profiles-dir or {PROFILES_ENV})"
            )
        return parse_profile_file(self.files[name])

    def load_all(self) -> list[DeviceProfile]:
        return [self.load(n) for n in self.names()]


def parse_profile_file(path: Path) -> DeviceProfile:
    """Read and validate one profile file; errors name the file and the field."""
    data = read_toml(path, ProfileError)
    if data.get("schema_version") not in (None, SCHEMA_VERSION) and isinstance(data.get("schema_version"), int):
        raise ProfileError(
            f"{path}: schema_version {data['schema_version']} is not supported by this edgekit "
            f"(supported: {SCHEMA_VERSION})"
        )
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(f"{path}: {describe_validation_error(e)}") from None
    if profile.id != path.stem:
        raise ProfileError(f"{path}: field 'id' is {profile.id!r} but the file is named {path.stem!r}; make them equal")
    return profile


def describe_validation_error(e: ValidationError) -> str:
    """Pydantic's first error as one line: field path, problem, the value given."""
    err = e.errors()[0]
    where = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "missing":
        return f"field '{where}' is missing"
    given = repr(err["input"])
    given = given if len(given) <= 80 else given[:77] + "..."
    extra = f" (got {given})" if err["type"] != "extra_forbidden" and not isinstance(err["input"], dict) else ""
    more = f" [and {e.error_count() - 1} more problem(s)]" if e.error_count() > 1 else ""
    return f"field '{where}': {msg}{extra}{more}"


def load_profile(name: str, extra_dirs: list[Path] | None = None) -> DeviceProfile:
    return ProfileRegistry(extra_dirs).load(name)

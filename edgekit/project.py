"""The user's project: which model, which data, which task (``edgekit.toml``).

    schema_version = 1
    name = "digits"
    seed = 0
    outputs = ["logits"]

    [task]
    kind = "classification"
    metric = "accuracy"

    [model]
    entry = "examples/digits/model.py:student"   # or "package.module:function"
    weights = "student.safetensors"               # optional: safetensors or a torch state_dict

    [teacher]                                     # optional: distil it into a student in `edgekit build`
    entry = "examples/digits/model.py:teacher"

    [distill]                                     # optional; needs [teacher] (see edgekit.distill.project)
    student = "examples/digits/model.py:StudentCNN"
    temperature = 2.0
    alpha = 0.9

    [data]
    entry = "examples/digits/data.py:load_splits"

    [[inputs]]
    name = "image"
    shape = [1, 1, 8, 8]

Paths are relative to the folder holding edgekit.toml. The model entry returns
an ``nn.Module``; the data entry returns ``{"train": (x, y), "calib": (x, y),
"eval": (x, y)}`` of numpy arrays.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pickle
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.distill.project import DistillSpec
from edgekit.errors import ProjectError, UnsafeFileError
from edgekit.profiles import describe_validation_error

PROJECT_FILE = "edgekit.toml"
SPLITS = ("train", "calib", "eval")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    entry: str = Field(pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$",
                       description="'path/to/file.py:function' or 'package.module:function'")
    weights: str | None = None


class DataSpec(_Frozen):
    entry: str = Field(pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$")


class TaskSpec(_Frozen):
    kind: Literal["classification"]  # language-model and embedding come with their issues
    metric: Literal["accuracy"] = "accuracy"


class InputSpec(_Frozen):
    name: str = "input"
    shape: tuple[int, ...] = Field(min_length=1)
    dtype: Literal["float32"] = "float32"


class ProjectSpec(_Frozen):
    schema_version: Literal[1] = 1
    name: str
    seed: int = 0
    task: TaskSpec
    model: ModelSpec
    teacher: ModelSpec | None = None
    distill: DistillSpec | None = None  # settings of the distill stage; defaults apply when absent
    data: DataSpec
    inputs: tuple[InputSpec, ...] = Field(min_length=1, max_length=1)
    outputs: tuple[str, ...] = ("output",)
    root: Path = Path(".")
    file: Path = Path(PROJECT_FILE)

    @model_validator(mode="after")
    def _distill_needs_a_teacher(self) -> ProjectSpec:
        if self.distill is not None and self.teacher is None:
            raise ValueError("[distill] needs a teacher to learn from: add [teacher] entry = \"file.py:function\" "
                             "(returning the trained teacher), or remove [distill]")
        return self


def load_project(path: str | Path | None = None) -> ProjectSpec:
    """Read ``edgekit.toml`` from a file or a folder (default: the current folder)."""
    p = Path(path) if path else Path.cwd()
    file = p / PROJECT_FILE if p.is_dir() else p
    if not file.is_file():
        raise ProjectError(f"no project file at {file}; create {PROJECT_FILE} or pass --project PATH")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ProjectError(f"{file}: not valid TOML: {e}") from None
    try:
        return ProjectSpec.model_validate({**data, "root": file.parent.resolve(), "file": file.resolve()})
    except ValidationError as e:
        raise ProjectError(f"{file}: {describe_validation_error(e)}") from None


def resolve_entry(project: ProjectSpec, entry: str, what: str) -> Callable[..., Any]:
    """Import ``file.py:func`` (relative to the project) or ``package.module:func``."""
    target, func_name = entry.rsplit(":", 1)
    if target.endswith(".py"):
        file = (project.root / target).resolve()
        if not file.is_file():
            raise ProjectError(f"{project.file}: {what} entry {entry!r}: file {file} does not exist")
        mod_name = f"_edgekit_project_{abs(hash(str(file)))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(file.parent))  # let the file import its siblings
            try:
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
            except Exception as e:
                sys.modules.pop(mod_name, None)
                raise ProjectError(f"{what} entry {entry!r}: importing {file} failed: {type(e).__name__}: {e}") from e
            finally:
                sys.path.remove(str(file.parent))
    else:
        sys.path.insert(0, str(project.root))
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ProjectError(f"{project.file}: {what} entry {entry!r}: cannot import module {target!r}: {e}") from None
        finally:
            sys.path.remove(str(project.root))
    func = getattr(module, func_name, None)
    if not callable(func):
        names = [n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")]
        raise ProjectError(f"{project.file}: {what} entry {entry!r}: {target} has no function {func_name!r}"
                           f" (functions there: {', '.join(names) or 'none'})")
    return func


def pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a pickle (raw, or inside a torch zip) references, read without
    unpickling anything."""
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    else:
        blobs = [path.read_bytes()]
    found: list[str] = []
    for blob in blobs:
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(blob):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # truncated or not a pickle: report what was seen
            pass
    return found


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray


def load_data(project: ProjectSpec) -> dict[str, Split]:
    """Call the data entry and check its splits against the declared input."""
    raw = resolve_entry(project, project.data.entry, "data")()
    if not isinstance(raw, dict) or set(SPLITS) - set(raw):
        raise ProjectError(f"data entry {project.data.entry!r} must return a dict with keys {', '.join(SPLITS)}")
    inp = project.inputs[0]
    splits = {}
    for name in SPLITS:
        x, y = (np.asarray(a) for a in raw[name])
        if x.shape[1:] != tuple(inp.shape[1:]):
            raise ProjectError(f"data split {name!r}: samples have shape {x.shape[1:]}, but input "
                               f"{inp.name!r} is declared as {tuple(inp.shape)} (batch first)")
        if len(x) != len(y) or len(x) == 0:
            raise ProjectError(f"data split {name!r}: {len(x)} inputs and {len(y)} labels; need as many, at least one")
        # A fresh C-order copy: standard strides even on size-1 axes (numpy keeps odd ones from
        # x[:, None]; torch.export reads them as a channels-last dim order and XNNPACK then fails).
        splits[name] = Split(np.array(x, dtype=inp.dtype, order="C"), np.array(y, dtype=np.int64))
    return splits


def load_model(project: ProjectSpec, spec: ModelSpec | None = None, what: str = "model") -> Any:
    """Build the model from its entry point and load its weights file safely, if any."""
    import torch

    spec = spec or project.model
    model = resolve_entry(project, spec.entry, what)()
    if not isinstance(model, torch.nn.Module):
        raise ProjectError(f"{what} entry {spec.entry!r} returned {type(model).__name__}, not a torch.nn.Module")
    if spec.weights:
        state = load_state_dict((project.root / spec.weights).resolve())
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ProjectError(f"weights {spec.weights} do not fit {type(model).__name__}: "
                               f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
    return model.eval()


def load_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from safetensors or a torch file, never executing pickled code."""
    import torch

    if not path.is_file():
        raise ProjectError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise ProjectError(f"weights file {path} is not valid safetensors: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        culprits = [g for g in pickle_globals(path) if not g.startswith(("torch.", "collections.OrderedDict"))]
        raise UnsafeFileError(
            f"refused to load {path}: it is a pickle that would import "
            f"{', '.join(culprits[:3]) or 'objects other than tensors'} (loading it could run code). "
            "Save weights with safetensors or torch.save(model.state_dict())"
        ) from None
    except Exception as e:
        raise ProjectError(f"weights file {path} cannot be read as a torch state_dict: {e}".splitlines()[0]) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ProjectError(f"weights file {path} does not hold a state_dict (a dict of tensors)")
    return state

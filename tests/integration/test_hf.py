"""[model] hf: Hugging Face folders saved here with transformers (random weights, no download), built as
embedding projects through ONNX, opened with the Python API; and what a bad folder or bad data gets."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import cli

WORDS = ("the a of to and in is for file open read write loop while return value list dict string "
         "function class module import error raise try except with as if else").split()


def _tokenizer(folder: Path, extra_tokens: int = 0) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS,
                                         *(f"extra{i}" for i in range(extra_tokens))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                 ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))


def _bert(folder: Path, layers: int = 2, init: float = 0.02) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=4 + len(WORDS), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32, initializer_range=init)).save_pretrained(folder)
    _tokenizer(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                                  "pooling_mode_cls_token": False}))
    return folder


def _llama(folder: Path, layers: int = 2) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4 + len(WORDS), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    LlamaModel(config).save_pretrained(folder)
    _tokenizer(folder)
    return folder


DATA = '''
import random
WORDS = {words!r}
def texts(n, seed):
    r = random.Random(seed)
    return [" ".join(r.choice(WORDS) for _ in range(r.randint(3, 12))) for _ in range(n)]
def load_splits():
    return {{"train": {{"text": texts(20, 1)}}, "calib": {{"text": texts(16, 2)}}, "eval": {{"text": texts(24, 3)}}}}
def named():  # the same, already tokenized by hand: ids only (no attention_mask)
    import numpy as np
    ids = np.ones((8, 16), np.int64)
    return {{"train": {{"input_ids": ids}}, "calib": {{"input_ids": ids}}, "eval": {{"input_ids": ids}}}}
'''


def _project(root: Path, model: Path, data: str = "load_splits", inputs: tuple[str, ...] = ("input_ids",
                                                                                             "attention_mask")) -> Path:
    root.mkdir(exist_ok=True)
    (root / "data.py").write_text(DATA.format(words=list(WORDS)))
    blocks = "".join(f'\n[[inputs]]\nname = "{n}"\nshape = [1, 16]\ndtype = "int64"\n' for n in inputs)
    (root / "edgekit.toml").write_text(textwrap.dedent(f'''\
        schema_version = 1
        name = "tiny-encoder"
        outputs = ["sentence_embedding"]
        [task]
        kind = "embedding"
        [model]
        hf = "{model}"
        [data]
        entry = "data.py:{data}"
        ''') + blocks)
    return root


def _build(project: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--format", "onnx", "--quant", "none",
                                    "--project", str(project), "--out", str(out), *extra])


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_a_saved_hf_encoder_builds_as_an_embedding_bundle(kind, tmp_path):
    model = (_bert if kind == "bert" else _llama)(tmp_path / kind)
    out = tmp_path / "out"
    result = _build(_project(tmp_path / "project", model), out)
    assert result.exit_code == 0, result.output
    bundle = edgekit.Bundle.open(out)
    m = bundle.manifest
    assert (m.schema_version, m.task, m.tokenizer_file) == (2, "embedding", "tokenizer.json")
    assert [(t.name, t.dtype, t.shape) for t in m.forward.inputs] == [("input_ids", "int64", (1, 16)),
                                                                       ("attention_mask", "int64", (1, 16))]
    assert m.forward.outputs[0].name == "sentence_embedding" and m.forward.outputs[0].shape == (1, 32)
    v = m.data["validation"]
    assert v["passed"] and v["metric"] == "retrieval_agreement" and v["metrics"]["cosine_min"] > 0.9999
    assert (out / "README.md").read_text().count("tokenizer.json") >= 2
    # the API tokenizes with the bundled tokenizer and runs the model in ONNX Runtime: the PyTorch embeddings
    import torch

    from edgekit.hf import load_model, tokenize

    texts = ["open the file and read it", "while loop"]
    got = bundle.embed(texts)
    arrays = tokenize(model, texts, ["input_ids", "attention_mask"], 16)
    with torch.no_grad():
        want = load_model(model, "embedding", ["input_ids", "attention_mask"])(
            *(torch.from_numpy(arrays[n]) for n in ("input_ids", "attention_mask"))).numpy()
    assert got.shape == (2, 32) and np.abs(got - want).max() < 1e-4
    if kind == "bert":  # sentence-transformers' Normalize step is in the graph
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return _bert(tmp_path_factory.mktemp("hf") / "bert")


def _copy(bert: Path, dest: Path) -> Path:
    return Path(shutil.copytree(bert, dest))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "model.safetensors").unlink(), "has no .safetensors weights"),
    (lambda f: ((f / "model.safetensors").rename(f / "pytorch_model.bin")), "is a pickle, which edgekit does not load"),
    (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer.json; the bundle needs the tokenizer"),
    (lambda f: _tokenizer(f, extra_tokens=50), "the tokenizer does not belong to this model"),
    (lambda f: (f / "config.json").unlink(), "has no config.json"),
])
def test_a_bad_hf_folder_is_a_one_line_error(damage, message, bert, tmp_path):
    folder = _copy(bert, tmp_path / "model")
    damage(folder)
    result = _build(_project(tmp_path / "project", folder), tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ") and message in result.output


def test_inputs_the_model_does_not_take_or_data_without_them(bert, tmp_path):
    result = _build(_project(tmp_path / "p1", bert, inputs=("input_ids", "pixel_values")), tmp_path / "o1")
    assert result.exit_code == 2 and "'pixel_values' is not an input of a Hugging Face model" in result.output
    result = _build(_project(tmp_path / "p2", bert, data="named"), tmp_path / "o2")
    assert result.exit_code == 2 and "has no 'attention_mask' array (it has 'input_ids')" in result.output


def test_integer_data_for_a_float_input_and_a_classifier_without_labels(tmp_path):
    (tmp_path / "model.py").write_text("import torch\ndef net(): return torch.nn.Linear(4, 3)\n")
    (tmp_path / "data.py").write_text(
        "import numpy as np\n"
        "def ints():\n    x = np.ones((8, 4), np.int64); y = np.zeros(8, np.int64)\n"
        "    return {'train': (x, y), 'calib': (x, y), 'eval': (x, y)}\n"
        "def unlabelled():\n    x = {'x': np.ones((8, 4), np.float32)}\n"
        "    return {'train': x, 'calib': x, 'eval': x}\n")
    for entry, message in (("ints", "input 'x' holds int64 data, but it is declared float32"),
                           ("unlabelled", "split 'train' has no labels; a classifier's eval set needs them")):
        (tmp_path / "edgekit.toml").write_text(textwrap.dedent(f'''\
            name = "t"
            [task]
            kind = "classification"
            [model]
            entry = "model.py:net"
            [data]
            entry = "data.py:{entry}"
            [[inputs]]
            name = "x"
            shape = [1, 4]
            '''))
        result = _build(tmp_path, tmp_path / f"out-{entry}")
        assert result.exit_code == 2 and message in result.output, result.output


def test_int8_of_an_embedding_model_is_refused_where_no_recipe_fits(bert, tmp_path):
    result = CliRunner().invoke(cli, ["build", "-d", "galaxy-s24", "--project", str(_project(tmp_path / "p", bert)),
                                      "--dry-run"])
    assert result.exit_code == 3 and "int8 for embedding models is built for executorch/xnnpack" in result.output

"""examples/tiny_lm: the decoder family (RMSNorm, rotary positions, grouped-query attention, SwiGLU, tied
embeddings), its tokenizer (reproducible from Python's documentation) and its training loop, on tiny sizes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.lm.model import Decoder, DecoderConfig

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "examples" / "tiny_lm"
NAMES = ("data", "model", "train")  # the example's modules import each other by these plain names


@pytest.fixture(scope="module", autouse=True)
def tiny_lm_modules():
    """examples/tiny_lm's data, model and train, importable by their plain names for this module's tests only:
    other examples have a data.py and a model.py too (digits' model.py imports `data`), so the names and the
    path are put back afterwards."""
    saved = {n: sys.modules.pop(n) for n in NAMES if n in sys.modules}
    sys.path.insert(0, str(FOLDER))
    try:
        modules = [importlib.import_module(n) for n in NAMES]
        globals().update(data=modules[0], lm=modules[1], train=modules[2])
        globals()["TINY"] = DecoderConfig(vocab_size=modules[0].VOCAB_SIZE, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                          max_position_embeddings=64)
        yield
    finally:
        sys.path.remove(str(FOLDER))
        for n in NAMES:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def test_the_committed_tokenizer_is_what_training_it_again_gives():
    fresh = data.train_tokenizer(data.paragraphs()["train"])
    assert fresh.to_str() == data.load_tokenizer().to_str()
    tok = data.load_tokenizer()
    assert tok.get_vocab_size() == data.VOCAB_SIZE and tok.token_to_id(data.EOS) == 0
    text = "def f(x):\n    return x ** 2  # ünïcode"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: nothing is unknown or lost


def test_the_splits_are_fixed_and_disjoint():
    p = data.paragraphs()
    assert min(len(v) for v in p.values()) > 200 and not set(p["eval"]) & set(p["train"])
    s = data.load_splits(32)
    assert s["eval"]["tokens"].shape[1] == 33 and s["eval"]["tokens"].dtype == np.int64
    assert len(s["train"]["tokens"]) > 5 * len(s["eval"]["tokens"])


def test_the_decoder_is_causal_and_groups_its_queries():
    torch.manual_seed(0)
    model = Decoder(TINY).eval()
    assert model.model.layers[0].self_attn.k_proj.out_features == TINY.num_key_value_heads * TINY.head_dim  # 2 K/V heads for 4 query heads
    x = torch.randint(1, TINY.vocab_size, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 7) % TINY.vocab_size  # change the future
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape == (2, 16, TINY.vocab_size)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])
    with pytest.raises(ValueError, match="65 tokens, more than the model's maximum context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="must split into 5 heads"):
        DecoderConfig(hidden_size=32, num_attention_heads=5)


def test_training_learns_the_text():
    splits = {k: {"tokens": v["tokens"][:160]} for k, v in data.load_splits(32).items()}
    torch.manual_seed(0)
    before = train.perplexity(Decoder(TINY), splits["eval"]["tokens"])
    model, report = train.train(TINY, splits, epochs=2, lr=1e-2, batch_size=16, seed=0, say=lambda _: None)
    assert before > 1500  # about the vocabulary size (2048): no idea yet
    assert report["eval_perplexity"] < before / 2, report  # 20 steps of a 84k-parameter model: ~750 here


def test_trained_weights_are_cached_where_the_example_loads_them(tmp_path, monkeypatch):
    """train.py's save and model.py's load meet: the tied output layer is written once and comes back tied."""
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    monkeypatch.setitem(train.RECIPES, "student", (TINY, train.RECIPES["student"][1]))
    monkeypatch.setattr(lm, "STUDENT", TINY)
    torch.manual_seed(0)
    model = Decoder(TINY).eval()
    train.save(model, train.weights_path("student"), {"eval_perplexity": 1.0})
    loaded = lm.student()
    x = torch.randint(0, TINY.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_a_model_that_was_never_trained_says_how_to_train_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"run `make tiny-lm` once"):
        lm.teacher()


def test_token_level_kd_pulls_the_student_towards_the_teacher():
    """KD with alpha = 1 (the teacher's next-token distributions only, no labels): the student's predictions
    move towards the teacher's."""
    splits = {k: {"tokens": v["tokens"][:96]} for k, v in data.load_splits(32).items()}
    teacher, _ = train.train(TINY, splits, epochs=2, lr=1e-2, batch_size=16, seed=1, say=lambda _: None)
    x = torch.from_numpy(splits["eval"]["tokens"][:, :-1])

    def kl_to_teacher(model: torch.nn.Module) -> float:
        with torch.no_grad():
            p_t = torch.log_softmax(teacher(x), -1)
            return torch.nn.functional.kl_div(torch.log_softmax(model(x), -1), p_t, log_target=True,
                                              reduction="batchmean").item()

    torch.manual_seed(2)
    before = kl_to_teacher(Decoder(TINY))
    student, _ = train.train(TINY, splits, epochs=2, lr=1e-2, batch_size=16, seed=2, say=lambda _: None,
                             teacher=teacher, alpha=1.0)
    assert kl_to_teacher(student) < before / 2


def test_the_example_project_loads_its_models_by_path_alone(tmp_path, monkeypatch):
    """edgekit loads examples/tiny_lm/model.py by its path, with nothing of the folder importable by name (as in
    `edgekit build --project examples/tiny_lm`): the student and the teacher come from the cache."""
    from edgekit.project import load_model, load_project

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(FOLDER)])
    for n in NAMES:
        monkeypatch.delitem(sys.modules, n, raising=False)
    torch.manual_seed(0)
    for name, config in (("student", lm.STUDENT), ("teacher", lm.TEACHER)):
        model = Decoder(config).eval()
        train.save(model, lm.weights_path(name), {"eval_perplexity": 1.0})
        project = load_project(FOLDER)
        loaded = load_model(project, project.model if name == "student" else project.teacher, name)
        x = torch.randint(0, config.vocab_size, (1, 8))
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))

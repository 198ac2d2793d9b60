"""Embedding distillation: the cosine and MSE losses, a student made of some of a transformers teacher's layers
(BERT and Llama saved here with random weights), the build's distill stage for an embedding project, and the
settings that are refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_hf import _bert, _llama, _project

from edgekit.cli import cli
from edgekit.distill import DistillError
from edgekit.distill.losses import EMBEDDING_LOSSES, LOSSES, make_loss
from edgekit.errors import ProjectError


def test_the_embedding_losses_measure_what_they_say():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 0.0]])  # same direction, then orthogonal
    assert set(EMBEDDING_LOSSES) <= set(LOSSES)
    cosine, mse = make_loss({"name": "cosine"}), make_loss({"name": "mse"})
    assert cosine(a, b).item() == pytest.approx(0.5)  # (0 + 1) / 2
    assert mse(a, b).item() == pytest.approx((4 + 0 + 1 + 4) / 4)
    assert cosine(a, a * 5).item() == pytest.approx(0.0, abs=1e-7) and mse(a, a).item() == 0.0
    with pytest.raises(DistillError, match=r"shape \[2, 3\] but the student's \[2, 2\]"):
        cosine(a, torch.zeros(2, 3))
    with pytest.raises(DistillError, match="has no setting temperature"):
        make_loss({"name": "cosine", "kwargs": {"temperature": 2}})


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_a_student_keeps_the_chosen_layers_of_the_teacher(kind, tmp_path):
    from edgekit.hf import encoder_layers, keep_layers, load_model

    folder = (_bert if kind == "bert" else _llama)(tmp_path / kind, layers=4)
    teacher = load_model(folder, "embedding", ["input_ids", "attention_mask"])
    student = keep_layers(teacher, (0, 3))
    _, t_layers = encoder_layers(teacher)
    _, s_layers = encoder_layers(student)
    assert (len(t_layers), len(s_layers)) == (4, 2)
    assert student.encoder.config.num_hidden_layers == 2 and teacher.encoder.config.num_hidden_layers == 4
    for s, t in ((s_layers[0], t_layers[0]), (s_layers[1], t_layers[3])):
        for (name, ps), (_, pt) in zip(s.named_parameters(), t.named_parameters()):
            assert torch.equal(ps, pt) and ps.data_ptr() != pt.data_ptr(), name  # a copy, not shared
    ids = torch.randint(4, 20, (3, 16))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out_s, out_t = student(ids, mask), teacher(ids, mask)
    assert out_s.shape == out_t.shape == (3, 32) and not torch.allclose(out_s, out_t)
    for bad in ((), (0, 4), (1, 1), (-1,)):
        with pytest.raises(ProjectError, match=r"student_layers = .*distinct layer indices of the teacher's 4"):
            keep_layers(teacher, bad)


def _distill_project(root: Path, teacher: Path, **distill: object) -> Path:
    _project(root, teacher)
    settings = {"method": "cosine", "student_layers": [0, 2], "epochs": 4, "batch_size": 4, "lr": 1e-3, **distill}
    def toml(v: object) -> str:
        return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(x)}" for k, x in v.items()) + " }" \
            if isinstance(v, dict) else json.dumps(v)

    lines = "".join(f"{k} = {toml(v)}\n" for k, v in settings.items() if v is not None)
    text = (root / "edgekit.toml").read_text()
    (root / "edgekit.toml").write_text(text.replace("[data]", f'[teacher]\nhf = "{teacher}"\n[distill]\n{lines}[data]'))
    return root


def _build(project: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--format", "onnx", "--quant", "none", "--json",
                                    "--project", str(project), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    # weights drawn wide (std 0.5, not BERT's 0.02) so that every layer changes the embedding a lot: a student
    # missing two of them starts far from the teacher and has something to learn
    return _bert(tmp_path_factory.mktemp("hf") / "bert4", layers=4, init=0.5)


def test_the_build_distils_an_embedding_student_and_ships_it(teacher, tmp_path):
    project = _distill_project(tmp_path / "p", teacher)
    result = _build(project, tmp_path / "out")
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    d = m["distill"]
    assert (d["task"], d["method"], d["student_layers"], d["epochs_run"]) == ("embedding", "cosine", [0, 2], 4)
    assert d["student_parameters"] < d["teacher_parameters"]
    chosen = d["selection"]  # smaller than the [model] (the 4-layer network): the compression the project asked for
    assert chosen["shipped"] == "distilled" and chosen["metric"] == "cosine to the teacher"
    assert chosen["distilled_parameters"] == d["student_parameters"] < chosen["model_parameters"]
    assert chosen["model"] == pytest.approx(1.0) and chosen["distilled"] < 0.9999  # the [model] is the teacher itself
    assert "the smaller network the project asked for" in chosen["reason"]
    # training moved the student towards the teacher (measured on eval, best epoch chosen on calib)
    assert d["student"]["cosine_mean"] > d["initial_student"]["cosine_mean"]
    assert d["history"][-1]["train_loss"] < d["history"][0]["train_loss"]
    assert m["validation"]["passed"] and m["validation"]["metrics"]["cosine_min"] > 0.9999  # the export = the student
    # the bundle ships the 2-layer student: smaller than the 4-layer model of --no-distill
    plain = _build(project, tmp_path / "plain", "--no-distill")
    assert plain.exit_code == 0, plain.output
    assert m["model"]["bytes"] < json.loads(plain.stdout)["model"]["bytes"]


def test_edgekit_distill_trains_an_embedding_student_alone(teacher, tmp_path):
    project = _distill_project(tmp_path / "p", teacher, epochs=2)
    result = CliRunner().invoke(cli, ["distill", "--project", str(project), "--out", str(tmp_path / "kd")])
    assert result.exit_code == 0, result.output
    assert "calib cosine to the teacher" in result.output and "before training" in result.output
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert metrics["task"] == "embedding" and len(metrics["history"]) == 2
    assert (tmp_path / "kd" / "student.safetensors").is_file()


def test_mse_needs_no_other_settings(teacher, tmp_path):
    result = _build(_distill_project(tmp_path / "p", teacher, method="mse", epochs=1), tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["distill"]["loss"] == {"name": "mse", "kwargs": {}}


@pytest.mark.parametrize("settings, message", [
    ({"method": "hinton", "student_layers": None}, "a embedding project distils with method = \"cosine\" or \"mse\""),
    ({"student_layers": [0, 9]}, "student_layers = [0, 9]: give distinct layer indices of the teacher's 4 layers"),
    ({"student": "data.py:named"}, "give one of student (an entry) and student_layers"),
    ({"hints": {"a": "b"}}, "matches the teacher's embeddings; hints are for fitnet"),
])
def test_distill_settings_that_do_not_fit_an_embedding_project(settings, message, teacher, tmp_path):
    result = _build(_distill_project(tmp_path / "p", teacher, **settings), tmp_path / "out")
    assert result.exit_code in (2, 3), result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ") and message in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    (('method = "hinton"', 'method = "cosine"'), "method 'cosine' matches embeddings; a classification project"),
    (('student = "examples/digits/model.py:StudentCNN"', "student_layers = [0]"),
     "student_layers picks layers of a transformers teacher"),
])
def test_an_embedding_loss_on_a_classifier_or_layers_of_a_teacher_entry_are_refused(change, message, tmp_path):
    root = Path(__file__).resolve().parents[2]
    text = (root / "edgekit.toml").read_text().replace(*change).replace('"examples/', f'"{root}/examples/')
    (tmp_path / "edgekit.toml").write_text(text)
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--project", str(tmp_path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ") and message in result.output


def test_the_minilm_l3_example_plans_a_distill_stage():
    root = Path(__file__).resolve().parents[2]
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--format", "onnx", "--project",
                                      str(root / "examples" / "minilm_l3"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "load -> distill -> export -> validate" in result.output

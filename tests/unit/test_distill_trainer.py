"""The distillation trainer and ``distill()`` on a slice of the digits data with small CNNs: determinism,
resume, the teacher-logit cache, early stopping, FitNet stages, outputs, and the refusals."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from edgekit.distill import DistillError, DistillWarning
from edgekit.distill.api import distill, fresh_student
from edgekit.distill.cli import distill_command
from edgekit.distill.losses import kd_loss_fn
from edgekit.distill.project import DistillSpec, load_student
from edgekit.distill.trainer import evaluate_classifier
from edgekit.project import Split, load_data, load_model, load_project
from edgekit.train import fine_tune


class Small(nn.Module):
    """features.0 conv, features.1 ReLU, features.2 pool; a two-layer classifier."""

    def __init__(self, width: int = 4, classes: int = 10, batch_norm: bool = False):
        super().__init__()
        norm = [nn.BatchNorm2d(width)] if batch_norm else []
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), *norm, nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run beside others on 2 cores: one intra-op thread is faster than two fighting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits(root):
    full = load_data(load_project(root))
    return {"train": Split(full["train"].x[:256], full["train"].y[:256]),
            "eval": Split(full["eval"].x[:128], full["eval"].y[:128])}


@pytest.fixture(scope="module")
def teacher(splits):
    """A wider CNN with batch norm, trained briefly on the labels (the same loop, method 'ce')."""
    torch.manual_seed(1)
    model = Small(8, batch_norm=True)
    distill(model, None, splits, method="ce", epochs=12, lr=1e-2)
    return model.eval()


def student(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return Small(width)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        torch.testing.assert_close(value, b[k], rtol=0, atol=atol, msg=k)


def test_teacher_is_good_enough_to_learn_from(teacher, splits):
    acc = evaluate_classifier(teacher, torch.from_numpy(splits["eval"].x), torch.from_numpy(splits["eval"].y))
    assert acc["eval_accuracy"] > 0.8


def test_same_seed_gives_identical_weights_and_another_seed_does_not(teacher, splits):
    runs = [distill(student(), teacher, splits, epochs=2, seed=s) for s in (0, 0, 1)]
    assert_same_weights(weights(runs[0].student), weights(runs[1].student))
    assert runs[0].metrics["history"] == runs[1].metrics["history"]
    assert not torch.equal(runs[0].student.classifier[1].weight, runs[2].student.classifier[1].weight)


def test_teacher_logit_cache_trains_the_same_student(teacher, splits):
    plain = distill(student(), teacher, splits, epochs=2, temperature=2.0, alpha=0.7)
    cached = distill(student(), teacher, splits, epochs=2, temperature=2.0, alpha=0.7, cache_teacher=True)
    # bit-exact on this host; a tolerance because the cache runs the teacher on other batch sizes, which
    # some BLAS kernels sum in another order
    assert_same_weights(weights(plain.student), weights(cached.student), atol=1e-6)
    assert cached.metrics["history"][-1]["train_loss"] == pytest.approx(plain.metrics["history"][-1]["train_loss"],
                                                                         rel=1e-5)


def test_resume_after_an_interruption_equals_a_straight_run(teacher, splits, tmp_path):
    straight = distill(student(), teacher, splits, epochs=4, out_dir=tmp_path / "a")

    def interrupt_after_epoch_2(p):
        if p.event == "epoch" and p.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(student(), teacher, splits, epochs=4, out_dir=tmp_path / "b", on_progress=interrupt_after_epoch_2)
    resumed = distill(student(seed=7), teacher, splits, epochs=4, out_dir=tmp_path / "b", resume=True)
    assert resumed.metrics["resumed_from_epoch"] == 2 and len(resumed.metrics["history"]) == 4
    # the same computation replayed: bit-exact, not merely close
    assert_same_weights(weights(straight.student), weights(resumed.student))
    assert resumed.best_epoch == straight.best_epoch and resumed.metrics["history"] == straight.metrics["history"]


def test_resume_from_another_models_checkpoint_is_refused(teacher, splits, tmp_path):
    distill(student(), teacher, splits, epochs=1, out_dir=tmp_path)
    with pytest.raises(DistillError, match=r"refusing to resume from .*checkpoint.safetensors: it was saved for "
                                           r"another model \(student.features.0.weight has shape \[4, 1, 3, 3\] "
                                           r"there, \[6, 1, 3, 3\] here"):
        distill(student(width=6), teacher, splits, epochs=1, out_dir=tmp_path, resume=True)
    with pytest.raises(DistillError, match=r"its config was .*'lr': 0.003.* now .*'lr': 0.01"):
        distill(student(), teacher, splits, epochs=1, lr=1e-2, out_dir=tmp_path, resume=True)
    with pytest.raises(DistillError, match="nothing to resume: no checkpoint in"):
        distill(student(), teacher, splits, epochs=1, out_dir=tmp_path / "empty", resume=True)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(DistillError, match="is not an edgekit distillation checkpoint"):
        distill(student(), teacher, splits, epochs=1, out_dir=tmp_path, resume=True)


def test_teacher_in_training_mode_is_put_in_eval_and_warned_once(teacher, splits):
    teacher.train()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            distill(student(), teacher, splits, epochs=2)
        said = [w for w in caught if issubclass(w.category, DistillWarning)]
        assert len(said) == 1 and "teacher (Small) was in training mode; switched it to eval mode" in str(
            said[0].message)
        assert not any(m.training for m in teacher.modules())
    finally:
        teacher.eval()


def test_teacher_with_another_class_count_is_refused_before_training(splits):
    seen = []
    with pytest.raises(DistillError, match="the teacher outputs 12 classes but the student 10"):
        distill(student(), Small(8, classes=12).eval(), splits, epochs=1, on_progress=seen.append)
    assert seen == []


def test_early_stopping_keeps_the_best_epoch(teacher, splits):
    rng = np.random.default_rng(0)
    noisy = {"train": splits["train"], "eval": Split(splits["eval"].x, rng.integers(0, 10, len(splits["eval"].y)))}
    result = distill(student(), teacher, noisy, epochs=40, patience=3, lr=1e-2, schedule="constant")
    history = result.metrics["history"]
    assert result.metrics["stopped_early"] and len(history) == result.best_epoch + 3 < 40
    best = history[result.best_epoch - 1]
    assert best["eval_accuracy"] == max(h["eval_accuracy"] for h in history)
    now = evaluate_classifier(result.student, torch.from_numpy(noisy["eval"].x), torch.from_numpy(noisy["eval"].y))
    assert now["eval_accuracy"] == best["eval_accuracy"] and now["eval_loss"] == pytest.approx(best["eval_loss"])


def test_outputs_are_written_atomically_and_reload(teacher, splits, tmp_path):
    events = []
    result = distill(student(), teacher, splits, epochs=2, batch_size=100, out_dir=tmp_path, on_progress=events.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "metrics.json",
                                                          "student.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {0o666 & ~umask}  # not mkstemp's 0600
    reloaded = Small(4)
    reloaded.load_state_dict(load_file(str(tmp_path / "student.safetensors")))
    x = torch.from_numpy(splits["eval"].x)
    assert torch.equal(reloaded.eval()(x), result.student(x))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["best_epoch"] == result.best_epoch
    assert metrics["student_accuracy"] == result.student_accuracy == metrics["history"][result.best_epoch - 1][
        "eval_accuracy"]
    assert metrics["teacher_accuracy"] == evaluate_classifier(teacher, x, torch.from_numpy(splits["eval"].y))[
        "eval_accuracy"]
    assert metrics["loss"] == {"name": "hinton", "kwargs": {"temperature": 4.0, "alpha": 0.9, "ignore_index": -100}}
    # progress: every step of both epochs (256 samples, batches of 100 -> 3 steps), then one epoch event each
    assert [(p.event, p.epoch, p.step) for p in events] == [
        ("step", 1, 1), ("step", 1, 2), ("step", 1, 3), ("epoch", 1, 3),
        ("step", 2, 1), ("step", 2, 2), ("step", 2, 3), ("epoch", 2, 3)]
    assert events[3].metrics["eval_accuracy"] == metrics["history"][0]["eval_accuracy"]


def test_fitnet_stage_one_trains_only_up_to_the_guided_layer(teacher, splits):
    model = student()
    before = weights(model)
    after_stage_one: dict[str, torch.Tensor] = {}

    def snapshot(p):
        if p.stage == "hints" and p.event == "epoch":
            after_stage_one.update(weights(model))

    result = distill(model, teacher, splits, method="fitnet+hinton", hints=["features.1=features.1"], epochs=2,
                     hint_epochs=3, on_progress=snapshot)
    hint_losses = [h["train_loss"] for h in result.metrics["hint_history"]]
    assert len(hint_losses) == 3 and hint_losses[-1] < hint_losses[0]
    assert after_stage_one.keys() == before.keys()
    for name, value in after_stage_one.items():
        assert torch.equal(value, before[name]) != name.startswith("features.0"), name


def test_fitnet_joint_schedule_trains_regressor_with_the_student(teacher, splits, tmp_path):
    result = distill(student(), teacher, splits, method="fitnet", hints=["features.2=features.2"],
                     hint_schedule="joint", epochs=2, out_dir=tmp_path)
    assert result.metrics["hint_history"] == [] and result.metrics["loss"]["name"] == "ce"
    saved = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert "model.hints.regressors.0.map.weight" in saved and saved["model.hints.regressors.0.map.weight"].shape == (
        8, 4, 1, 1)


def test_bad_method_settings_are_refused(teacher, splits):
    with pytest.raises(DistillError, match="method 'hinton' needs a teacher"):
        distill(student(), None, splits)
    with pytest.raises(DistillError, match="unknown method 'hintn'"):
        distill(student(), teacher, splits, method="hintn")
    with pytest.raises(DistillError, match="hint layers are only used by the fitnet methods"):
        distill(student(), teacher, splits, hints=["features.1=features.1"])
    with pytest.raises(DistillError, match=r"alpha must be in \[0, 1\]"):
        distill(student(), teacher, splits, alpha=2.0)
    with pytest.raises(DistillError, match="student \\(Small\\) has no module 'features.9'; nearest: features.2, features.1"):
        distill(student(), teacher, splits, method="fitnet", hints=["features.1=features.9"])


def test_fresh_student_is_a_seeded_reinitialisation():
    trained = student(seed=3)
    a, b = fresh_student(trained, seed=5), fresh_student(trained, seed=5)
    assert_same_weights(weights(a), weights(b))
    assert not torch.equal(a.features[0].weight, trained.features[0].weight)

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

    with pytest.raises(DistillError, match="Scale has parameters but no reset_parameters"):
        fresh_student(Scale(), seed=0)


def test_kd_loss_plugs_into_the_shared_fine_tune_loop(teacher, splits):
    x, y = splits["train"].x, splits["train"].y
    model = student()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        target = teacher(xt).argmax(1)
        agree_before = (model(xt).argmax(1) == target).float().mean().item()
    teacher.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn = kd_loss_fn(teacher, {"name": "soft", "kwargs": {"temperature": 2.0}})
    assert not teacher.training and len([w for w in caught if issubclass(w.category, DistillWarning)]) == 1
    fine_tune(model, x, y, epochs=10, lr=1e-2, loss_fn=loss_fn)
    with torch.no_grad():
        agree_after = (model(xt).argmax(1) == target).float().mean().item()
    assert agree_after > max(0.8, agree_before + 0.3)


# ---------------------------------------------------------------- the command
TOML = """
name = "tiny"
seed = 0
[task]
kind = "classification"
[model]
entry = "nets.py:student"
{teacher}
[data]
entry = "nets.py:data"
[[inputs]]
name = "image"
shape = [1, 1, 8, 8]
"""

NETS = """
import numpy as np, torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 10))
    def forward(self, x):
        return self.classifier(self.features(x))

def student():
    return Net(4)

def teacher():
    torch.manual_seed(0)
    return Net(8)

def narrow():
    return Net(2)

def not_a_model():
    return "weights"

def data():
    rng = np.random.default_rng(0)
    x = rng.random((96, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 96)
    return {"train": (x[:64], y[:64]), "calib": (x[64:80], y[64:80]), "eval": (x[80:], y[80:])}
"""


def project(tmp_path, teacher: bool = True):
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "edgekit.toml").write_text(TOML.format(teacher='[teacher]\nentry = "nets.py:teacher"' if teacher
                                                       else ""))
    return tmp_path


def test_command_distills_and_summarises(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(distill_command, ["-p", str(project(tmp_path)), "--epochs", "2", "--batch-size", "32",
                                                  "--method", "fitnet+hinton", "--hint-layer", "features.1=features.1",
                                                  "--hint-epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "fitnet+hinton" and len(metrics["history"]) == 2 and len(metrics["hint_history"]) == 1
    assert f"student accuracy   {metrics['student_accuracy']:.2%}" in result.output
    assert f"teacher accuracy   {metrics['teacher_accuracy']:.2%}" in result.output
    assert f"best epoch         {metrics['best_epoch']} of 2 run" in result.output
    assert f"wrote              {out / 'student.safetensors'}" in result.output
    assert "epoch   2/2" in result.output
    again = CliRunner().invoke(distill_command, ["-p", str(tmp_path), "--epochs", "2", "--batch-size", "32",
                                                 "--method", "fitnet+hinton", "--hint-layer", "features.1=features.1",
                                                 "--hint-epochs", "1", "--out", str(out), "--resume"])
    assert again.exit_code == 0 and "resumed after epoch 2" in again.output


def test_command_refuses_a_project_without_teacher_and_bad_settings(tmp_path):
    result = CliRunner().invoke(distill_command, ["-p", str(project(tmp_path, teacher=False))])
    assert isinstance(result.exception, DistillError) and result.exception.exit_code == 2
    assert "declares no teacher; add [teacher] entry" in str(result.exception)
    result = CliRunner().invoke(distill_command, ["-p", str(project(tmp_path)), "--temperature", "0"])
    assert isinstance(result.exception, DistillError) and "temperature must be a number > 0" in str(result.exception)
    result = CliRunner().invoke(distill_command, ["-p", str(tmp_path), "--method", "fitnet"])
    assert "needs at least one hint layer: --hint-layer TEACHER_PATH=STUDENT_PATH" in str(result.exception)


def test_project_settings_name_the_untrained_student_and_map_onto_distill(tmp_path):
    spec = load_project(project(tmp_path))
    seeded = [load_student(spec, DistillSpec(student="nets.py:narrow"), seed=3) for _ in range(2)]
    assert seeded[0].features[0].out_channels == 2
    assert_same_weights(weights(seeded[0]), weights(seeded[1]))
    reinitialised = load_student(spec, DistillSpec(), seed=3)  # the [model] entry, re-initialised
    assert reinitialised.features[0].out_channels == 4
    with pytest.raises(DistillError, match="distill student entry 'nets.py:not_a_model' returned str"):
        load_student(spec, DistillSpec(student="nets.py:not_a_model"), seed=0)
    settings = DistillSpec(method="fitnet", hints={"features.1": "features.1"}, epochs=1, hint_epochs=1)
    result = distill(load_student(spec, settings, 0), load_model(spec, spec.teacher, "teacher"), load_data(spec),
                     **settings.distill_kwargs())
    assert result.metrics["hints"] == [{"teacher": "features.1", "student": "features.1", "weight": 1.0}]


def test_build_qat_loss_is_kd_against_the_teacher_only_after_distillation(teacher, splits):
    from edgekit.pipeline import _qat_loss

    x, y = (torch.from_numpy(a[:32]) for a in (splits["train"].x, splits["train"].y))
    out = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    record = {"loss": {"name": "hinton", "kwargs": {"temperature": 3.0, "alpha": 0.7}}}
    name, fn = _qat_loss(teacher, record)
    with torch.no_grad():
        t = teacher(x)
    p_t, log_p_s = torch.softmax(t / 3, -1), torch.log_softmax(out / 3, -1)
    by_hand = 0.7 * 9 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean() + 0.3 * nn.functional.cross_entropy(out, y)
    assert name == "hinton-kd" and fn(out, y, x).item() == pytest.approx(by_hand.item(), rel=1e-5)
    for distilled in (None, {"loss": {"name": "ce", "kwargs": {}}}):  # no distill stage / fitnet without KD
        name, fn = _qat_loss(teacher, distilled)
        assert name == "cross-entropy"
        assert fn(out, y, x).item() == pytest.approx(nn.functional.cross_entropy(out, y).item(), rel=1e-6)

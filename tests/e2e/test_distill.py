"""Distillation in the product: the build's distill stage (and --no-distill), quantization-aware distillation
in a QAT build, the `edgekit distill` command on the digits project, and its refusals as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from edgekit.bundle import verify
from edgekit.cli import cli

DISTILL_EPOCHS = 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Builds here train in this process beside other tests on 2 cores: one intra-op thread is faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _short_project(root: Path, folder: Path, ship: str) -> Path:
    text = (root / "edgekit.toml").read_text()
    assert "\nepochs = 30\n" in text
    text = text.replace('"examples/', f'"{root}/examples/').replace(
        "\nepochs = 30\n", f"\nepochs = {DISTILL_EPOCHS}\nship = {ship!r}\n")
    (folder / "edgekit.toml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def fast_project(root, tmp_path_factory) -> Path:
    """The digits project with absolute paths and a short distillation whose student ships whatever it scores."""
    return _short_project(root, tmp_path_factory.mktemp("kd-project"), "student")


def _build(project: Path, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(cli, ["build", "--project", str(project), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    manifest, problems = verify(out)
    assert problems == []
    return manifest | {"_output": result.output}


@pytest.fixture(scope="module")
def kd_qat(fast_project, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("kd-qat") / "bundle"
    return _build(fast_project, out, "-d", "pixel8", "--quant", "int8-qat", "--qat-epochs", "1"), out


@pytest.mark.slow
def test_build_distils_the_student_it_exports(kd_qat, root):
    import tomllib

    manifest, out = kd_qat
    d, declared = manifest["distill"], tomllib.loads((root / "edgekit.toml").read_text())["distill"]
    assert (d["method"], d["temperature"], d["alpha"]) == (declared["method"], declared["temperature"],
                                                          declared["alpha"])
    assert d["epochs"] == d["epochs_run"] == DISTILL_EPOCHS and 1 <= d["best_epoch"] <= DISTILL_EPOCHS
    assert d["best_epoch_chosen_on"] == "calib" and d["accuracy_measured_on"] == "eval"
    assert [h["epoch"] for h in d["history"]] == [1, 2, 3]
    best = max(d["history"], key=lambda h: h["calib_accuracy"])["calib_accuracy"]
    assert d["history"][d["best_epoch"] - 1]["calib_accuracy"] == best
    assert d["teacher_accuracy"] > 0.97 and d["original_student_accuracy"] > 0.93
    assert d["student_accuracy"] > 0.8  # 3 epochs from scratch (chance: 0.1)
    assert d["student_entry"].endswith("examples/digits/model.py:StudentCNN")
    # The bundle's PyTorch reference outputs are the distilled student's: its accuracy, recomputed from them.
    data = np.load(out / "eval.npz")
    assert float((data["reference.logits"].argmax(1) == data["labels"]).mean()) == pytest.approx(d["student_accuracy"])
    assert manifest["baseline"]["validation"]["reference_value"] == pytest.approx(d["student_accuracy"])
    stages = manifest["plan"]["stages"]
    assert stages[:2] == ["load", "distill"] and manifest["timings_s"]["distill"] > 0
    assert (f"distilled: hinton T={d['temperature']:g} α={d['alpha']:g}, best epoch {d['best_epoch']} of 3; "
            f"teacher {d['teacher_accuracy']:.2%}") in " ".join(manifest["_output"].split())


@pytest.mark.slow
def test_qat_after_distillation_learns_from_the_float_teacher(kd_qat, built):
    q = kd_qat[0]["model"]["export_details"]["quantization"]
    assert q["scheme"] == "int8-qat" and q["loss"] == "hinton-kd"
    assert q["kd"]["name"] == "hinton" and q["kd"]["teacher"].endswith("examples/digits/model.py:teacher")
    assert (q["kd"]["kwargs"]["temperature"], q["kd"]["kwargs"]["alpha"]) == (kd_qat[0]["distill"]["temperature"],
                                                                              kd_qat[0]["distill"]["alpha"])
    assert kd_qat[0]["validation"]["passed"] and kd_qat[0]["validation"]["accuracy_drop"] <= 1.0
    plain = verify(built("pixel8", "--quant", "int8-qat", "--qat-epochs", "2"))[0]  # --no-distill (conftest)
    assert plain["model"]["export_details"]["quantization"]["loss"] == "cross-entropy"


@pytest.mark.slow
def test_distill_stage_is_deterministic_and_no_distill_ships_the_model_entry(kd_qat, root, tmp_path, built):
    """The same distillation again, now with the default choice of what ships: 3 epochs from scratch do not beat
    the trained model entry on calib, so the build keeps the model entry and says why."""
    project = _short_project(root, tmp_path, "better")
    again = _build(project, tmp_path / "fp32", "-d", "host-cpu", "--format", "onnx", "--quant", "none")
    first, second = (dict(m["distill"], seconds=None, selection=None) for m in (kd_qat[0], again))
    assert first == second  # same seed, same student, epoch by epoch
    chosen, forced = again["distill"]["selection"], kd_qat[0]["distill"]["selection"]
    assert forced["shipped"] == "distilled" and forced["reason"].startswith('[distill] ship = "student"')
    assert chosen["shipped"] == "model" and chosen["split"] == "calib" and chosen["p_value"] >= 0.05
    assert (chosen["distilled"], chosen["model"]) == (forced["distilled"], forced["model"])
    assert chosen["model"] > chosen["distilled"]  # 3 epochs from scratch against the trained entry
    assert "ships the model entry, not the distilled student: the distilled student is worse than" in \
        " ".join(again["_output"].split())
    assert again["validation"]["reference_value"] == pytest.approx(second["original_student_accuracy"])
    skipped = verify(built("host-cpu", "--format", "onnx"))[0]  # conftest passes --no-distill
    assert skipped["distill"] is None and "distill" not in skipped["plan"]["stages"]
    assert "distill" not in skipped["timings_s"]
    assert skipped["validation"]["reference_value"] == pytest.approx(second["original_student_accuracy"])


@pytest.mark.slow
def test_distill_command_writes_a_student_that_is_really_trained(root, tmp_path):
    out = tmp_path / "kd"
    result = CliRunner().invoke(cli, ["distill", "--project", str(root), "--method", "hinton", "--temperature", "4",
                                      "--alpha", "0.9", "--epochs", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "hinton" and metrics["loss"]["kwargs"]["temperature"] == 4.0
    assert metrics["select_split"] == "calib" and metrics["eval_split"] == "eval" and len(metrics["history"]) == 4
    assert metrics["student_accuracy"] > 0.9
    # reload the written weights into the project's student architecture and measure it independently
    from edgekit.project import load_data, load_project, resolve_entry

    spec = load_project(root)
    student = resolve_entry(spec, spec.distill.student, "student")()
    student.load_state_dict(load_file(out / "student.safetensors"))
    ev = load_data(spec)["eval"]
    with torch.no_grad():
        accuracy = float((student.eval()(torch.from_numpy(ev.x)).argmax(1).numpy() == ev.y).mean())
    assert accuracy == pytest.approx(metrics["student_accuracy"])
    assert f"student accuracy   {accuracy:.2%}" in result.output


# ---------------------------------------------------------------- refusals, as the user sees them
NETS = """
import numpy as np, torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=4, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, classes))
    def forward(self, x):
        return self.classifier(self.features(x))

def student():
    return Net(4)

def wide():
    return Net(6)

def teacher():
    torch.manual_seed(0)
    return Net(8)

def five_classes():
    return Net(8, classes=5)

def data():
    rng = np.random.default_rng(0)
    x = rng.random((96, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 96)
    return {"train": (x[:64], y[:64]), "calib": (x[64:80], y[64:80]), "eval": (x[80:], y[80:])}
"""


def tiny_project(folder: Path, teacher: str = "teacher", distill: str = "") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "nets.py").write_text(NETS)
    (folder / "edgekit.toml").write_text(f"""
name = "tiny"
[task]
kind = "classification"
[model]
entry = "nets.py:student"
[teacher]
entry = "nets.py:{teacher}"
{distill}
[data]
entry = "nets.py:data"
[[inputs]]
name = "image"
shape = [1, 1, 8, 8]
""")
    return folder


def _error_line(result) -> str:
    """The command failed with exit code 2 and said so in one line, without a traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("args,teacher,message", [
    (["--temperature", "0"], "teacher", "error: temperature must be a number > 0, got 0.0"),
    (["--temperature", "-1"], "teacher", "error: temperature must be a number > 0, got -1.0"),
    (["--alpha", "1.5"], "teacher", "error: alpha must be in [0, 1] (the weight of the soft-label term), got 1.5"),
    (["--alpha", "-0.2"], "teacher", "error: alpha must be in [0, 1]"),
    ([], "five_classes", "error: the teacher outputs 5 classes but the student 10"),
    (["--method", "fitnet", "--hint-layer", "features.9=features.1"], "teacher",
     "error: teacher (Net) has no module 'features.9'; nearest: features.2, features.1, features.0"),
    (["--method", "fitnet", "--hint-layer", "features.1=featurs.1"], "teacher",
     "error: student (Net) has no module 'featurs.1'; nearest: features.1"),
])
def test_distill_command_refusals_are_one_line(tmp_path, args, teacher, message):
    project = tiny_project(tmp_path / "p", teacher)
    result = CliRunner().invoke(cli, ["distill", "-p", str(project), "--epochs", "1", "--out", str(tmp_path / "o"),
                                      *args])
    assert _error_line(result).startswith(message)
    assert not (tmp_path / "o" / "student.safetensors").exists()


def test_resume_from_another_models_checkpoint_is_refused(tmp_path):
    out = tmp_path / "o"
    args = ["distill", "--epochs", "1", "--batch-size", "32", "--out", str(out)]
    first = CliRunner().invoke(cli, [*args, "-p", str(tiny_project(tmp_path / "a"))])
    assert first.exit_code == 0, first.output
    before = (out / "checkpoint.safetensors").read_bytes()
    other = tiny_project(tmp_path / "b", distill='[distill]\nstudent = "nets.py:wide"')
    line = _error_line(CliRunner().invoke(cli, [*args, "-p", str(other), "--resume"]))
    assert line.startswith(f"error: refusing to resume from {out / 'checkpoint.safetensors'}: it was saved for "
                           "another model (student.features.0.weight has shape [4, 1, 3, 3] there, [6, 1, 3, 3] here")
    assert (out / "checkpoint.safetensors").read_bytes() == before


def test_bad_distill_table_stops_the_build_before_any_work(tmp_path):
    project = tiny_project(tmp_path / "p", distill="[distill]\nalpha = 2.0")
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--project", str(project), "--out",
                                      str(tmp_path / "out")])
    assert _error_line(result).startswith("error: ") and "field 'distill.alpha'" in result.output
    assert "less than or equal to 1" in result.output and not (tmp_path / "out").exists()

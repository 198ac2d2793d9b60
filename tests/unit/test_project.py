from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from edgekit.errors import ProjectError, UnsafeFileError
from edgekit.project import load_data, load_model, load_project, load_state_dict

MODEL_PY = """
import torch
def tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
def not_a_model():
    return 42
"""
DATA_PY = """
import numpy as np
def splits():
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 20)
    return {"train": (x, y), "calib": (x, y), "eval": (x, y)}
def wrong_shape():
    x = np.zeros((5, 3, 8, 8), np.float32); y = np.zeros(5, np.int64)
    return {"train": (x, y), "calib": (x, y), "eval": (x, y)}
"""


def make_project(tmp_path: Path, model: str = "model.py:tiny", data: str = "data.py:splits",
                 weights: str | None = None, extra: str = "") -> Path:
    (tmp_path / "model.py").write_text(MODEL_PY)
    (tmp_path / "data.py").write_text(DATA_PY)
    w = f'weights = "{weights}"\n' if weights else ""
    (tmp_path / "edgekit.toml").write_text(f"""
name = "t"
outputs = ["logits"]
[task]
kind = "classification"
[model]
entry = "{model}"
{w}[data]
entry = "{data}"
[[inputs]]
name = "x"
shape = [1, 1, 8, 8]
{extra}""")
    return tmp_path


def test_root_project_is_the_digits_example(root):
    spec = load_project(root)
    assert spec.name == "digits" and spec.inputs[0].shape == (1, 1, 8, 8)
    assert spec.teacher is not None and spec.model.entry.startswith("examples/digits/")


def test_loads_model_and_data(tmp_path):
    spec = load_project(make_project(tmp_path))
    splits = load_data(spec)
    assert splits["eval"].x.shape == (20, 1, 8, 8) and splits["eval"].y.dtype == "int64"
    assert isinstance(load_model(spec), torch.nn.Module)


def test_splits_have_standard_strides(tmp_path):
    (tmp_path / "odd.py").write_text(
        "import numpy as np\n"
        "def splits():\n"
        "    x = np.zeros((6, 8, 8), np.float32)[:, None]  # size-1 axis with a non-standard stride\n"
        "    y = np.zeros(6, np.int64)\n"
        "    return {'train': (x, y), 'calib': (x, y), 'eval': (x, y)}\n")
    spec = load_project(make_project(tmp_path, data="odd.py:splits"))
    x = load_data(spec)["eval"].x
    assert x.strides == (256, 256, 32, 4)


def test_missing_project_file(tmp_path):
    with pytest.raises(ProjectError, match="no project file"):
        load_project(tmp_path)


def test_missing_module_file(tmp_path):
    spec = load_project(make_project(tmp_path, model="nowhere.py:tiny"))
    with pytest.raises(ProjectError, match=r"nowhere\.py does not exist"):
        load_model(spec)


def test_missing_importable_module(tmp_path):
    spec = load_project(make_project(tmp_path, model="no_such_pkg.models:tiny"))
    with pytest.raises(ProjectError, match="cannot import module 'no_such_pkg.models'"):
        load_model(spec)


def test_missing_function_lists_available(tmp_path):
    spec = load_project(make_project(tmp_path, model="model.py:small"))
    with pytest.raises(ProjectError) as e:
        load_model(spec)
    assert "has no function 'small'" in str(e.value) and "tiny" in str(e.value)


def test_entry_must_return_module(tmp_path):
    spec = load_project(make_project(tmp_path, model="model.py:not_a_model"))
    with pytest.raises(ProjectError, match="returned int, not a torch.nn.Module"):
        load_model(spec)


def test_data_shape_must_match_input(tmp_path):
    spec = load_project(make_project(tmp_path, data="data.py:wrong_shape"))
    with pytest.raises(ProjectError, match=r"split 'train'.*\(3, 8, 8\).*'x'"):
        load_data(spec)


def test_invalid_entry_syntax(tmp_path):
    with pytest.raises(ProjectError, match="field 'model.entry'"):
        load_project(make_project(tmp_path, model="model.py"))


def test_safetensors_and_state_dict_weights(tmp_path):
    from safetensors.torch import save_file

    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.nn.init.constant_(ref[1].weight, 0.25)
    save_file(ref.state_dict(), tmp_path / "w.safetensors")
    model = load_model(load_project(make_project(tmp_path, weights="w.safetensors")))
    assert torch.equal(model[1].weight, ref[1].weight)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    model = load_model(load_project(make_project(tmp_path, weights="w.pt")))
    assert torch.equal(model[1].weight, ref[1].weight)


def test_weights_that_do_not_fit(tmp_path):
    torch.save({"1.weight": torch.zeros(3, 3)}, tmp_path / "w.pt")
    with pytest.raises(ProjectError, match="do not fit"):
        load_model(load_project(make_project(tmp_path, weights="w.pt")))


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Exploit(str(marker))}, f)
    with pytest.raises(UnsafeFileError) as e:
        load_state_dict(tmp_path / "evil.pt")
    assert "refused to load" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


# ---------------------------------------------------------------- [distill]
TEACHER = '[teacher]\nentry = "model.py:tiny"\n'


def test_root_project_distils_its_teacher_into_the_untrained_student(root):
    import tomllib

    declared = tomllib.loads((root / "edgekit.toml").read_text())["distill"]
    settings = load_project(root).distill
    assert settings is not None and settings.student == "examples/digits/model.py:StudentCNN"
    assert {k: getattr(settings, k) for k in declared} == declared
    settings.check()  # the shipped settings pass the same checks as CLI overrides


def test_distill_table_is_optional(tmp_path):
    assert load_project(make_project(tmp_path, extra=TEACHER)).distill is None


@pytest.mark.parametrize("table,field", [
    ("temperature = 0", "distill.temperature"),
    ("temperature = -2.5", "distill.temperature"),
    ("alpha = 1.5", "distill.alpha"),
    ("alpha = -0.1", "distill.alpha"),
    ("epochs = 0", "distill.epochs"),
    ('method = "dark-knowledge"', "distill.method"),
    ("temprature = 2.0", "distill.temprature"),
    ('student = "model.py"', "distill.student"),
])
def test_bad_distill_values_name_the_field(tmp_path, table, field):
    with pytest.raises(ProjectError, match=f"field '{field}'"):
        load_project(make_project(tmp_path, extra=f"{TEACHER}[distill]\n{table}\n"))


def test_fitnet_in_the_project_needs_hints(tmp_path):
    with pytest.raises(ProjectError, match="method 'fitnet' needs hints"):
        load_project(make_project(tmp_path, extra=f'{TEACHER}[distill]\nmethod = "fitnet"\n'))
    spec = load_project(make_project(tmp_path, extra=f'{TEACHER}[distill]\nmethod = "fitnet"\n'
                                                     'hints = { "1" = "1" }\n'))
    assert spec.distill.distill_kwargs()["hints"] == ["1=1"]


def test_distill_without_a_teacher_is_refused(tmp_path):
    with pytest.raises(ProjectError, match=r"\[distill\] needs a teacher to learn from: add \[teacher\]"):
        load_project(make_project(tmp_path, extra="[distill]\ntemperature = 2.0\n"))

"""Issue 10, defects 5 and 6: a malformed manifest or project is refused by every reader with one line and
its exit code (inspect and bench: 6 / project: 2; the runner: an INFRA_ERROR report), never a traceback,
and `bench` never runs a bundle whose manifest it cannot store the result of."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from edgekit_runner.__main__ import main as runner_main
from edgekit_runner.manifest import NAME as MANIFEST

from edgekit.cli import cli

ROOT_DIR = Path(__file__).resolve().parents[2]

DEEP = {"a": None}
for _ in range(200):
    DEEP = {"a": DEEP}


def _set(path: str, value):
    """An edit that sets manifest[path] (dotted), or deletes it when value is ...; '' is the whole document."""
    def edit(m):
        if path == "":
            return value
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
        return m
    return edit


MANIFEST_CASES = {
    "model-is-a-string": _set("model", "x"),
    "model-file-is-a-number": _set("model.file", 5),
    "no-model": _set("model", ...),
    "no-files": _set("files", ...),
    "file-entry-without-sha256": lambda m: (m["files"]["model.onnx"].pop("sha256"), m)[1],
    "huge-integer": _set("model.bytes", 10 ** 30),
    "negative-size": _set("model.bytes", -1),
    "deep-nesting": _set("model.export_details", DEEP),
    "array-at-the-top": _set("", [1, 2, 3]),
    "null-at-the-top": _set("", None),
    "newer-schema": _set("schema_version", 99),
    "schema-as-a-string": _set("schema_version", "1"),
    "not-written-by-edgekit": _set("kind", ...),
    "eval-shape-not-a-list": _set("eval.arrays.inputs", "x"),
    "unknown-runtime": _set("model.runtime", "pytorch"),
    "profile-is-null": _set("profile", None),
    "validation-error-is-text": _set("validation.max_abs_error", "big"),
    "shape-of-strings": _set("methods.0.inputs", [{"name": "image", "shape": ["1"], "dtype": "float32"}]),
    "undeclared-dynamic-dim": _set("methods.0.inputs", [{"name": "image", "shape": ["batch", 1, 8, 8],
                                                          "dtype": "float32"}]),
    "two-methods-one-name": lambda m: (m["methods"].append(m["methods"][0]), m)[1],
    "input-without-eval-array": lambda m: (m["eval"]["arrays"].pop("input.image"), m)[1],
    "sha256-uppercase": lambda m: (m["files"]["model.onnx"].update(sha256=m["files"]["model.onnx"]["sha256"].upper()),
                                   m)[1],
}
RAW_CASES = {
    "integer-of-5000-digits": lambda text: text.replace('"n_samples": 360', '"n_samples": ' + "9" * 5000),
    "nan": lambda text: text.replace('"n_samples": 360', '"n_samples": NaN'),
    "nesting-deeper-than-the-json-parser": lambda text: "[" * 100_000 + "]" * 100_000,
    "not-utf-8": lambda text: "\udcff",
    "empty": lambda text: "",
}


def _damage(bundle: Path, case: str) -> None:
    path = bundle / MANIFEST
    if case in MANIFEST_CASES:
        path.write_text(json.dumps(MANIFEST_CASES[case](json.loads(path.read_text()))))
    else:
        path.write_bytes(RAW_CASES[case](path.read_text()).encode("utf-8", "surrogateescape"))


ALL_CASES = [*MANIFEST_CASES, *RAW_CASES]


@pytest.mark.parametrize("case", ALL_CASES)
def test_a_malformed_manifest_is_one_line_everywhere(case, bundle_copy, capsys):
    _damage(bundle_copy, case)
    inspect = CliRunner().invoke(cli, ["inspect", str(bundle_copy)])
    assert inspect.exit_code == 6
    assert inspect.output.startswith("error: ") and inspect.output.count("\n") == 1, inspect.output
    bench = CliRunner().invoke(cli, ["bench", str(bundle_copy), "--on", "local", "--retries", "0"])
    assert bench.exit_code == 6 and bench.output.startswith("error: ") and bench.output.count("\n") == 1, bench.output
    assert runner_main([str(bundle_copy), "--no-accuracy", "--runs", "1", "--min-seconds", "0"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "INFRA_ERROR" and "\n" not in report["error"] and report["error"]


def test_newer_schema_names_both_versions(bundle_copy):
    _damage(bundle_copy, "newer-schema")
    result = CliRunner().invoke(cli, ["inspect", str(bundle_copy)])
    assert "schema_version 99 is not supported (this reader knows 1, 2); upgrade edgekit" in result.output


# ---------------------------------------------------------------- defect 6: the project spec and its entries

MODEL_PY = """
import torch


class Net(torch.nn.Module):
    def __init__(self, out="tensor"):
        super().__init__()
        self.fc, self.out = torch.nn.Linear(4, 3), out

    def forward(self, x):
        y = self.fc(x)
        return {"tensor": y, "dict": {"logits": y}, "str": "logits", "scalar": y.sum()}[self.out]


def good(): return Net()
def raises(): raise RuntimeError("weights server unreachable")
def returns_dict(): return Net("dict")
def returns_str(): return Net("str")
def returns_scalar(): return Net("scalar")
def not_a_module(): return 42
"""

DATA_PY = """
import numpy as np

rng = np.random.default_rng(0)


def split(n=20, labels=None):
    return rng.standard_normal((n, 4)).astype("float32"), np.arange(n) % 3 if labels is None else labels


def good(): return {"train": split(), "calib": split(), "eval": split()}
def labels_2d(): return {"train": split(), "calib": split(), "eval": split(labels=np.zeros((20, 3)))}
def ragged(): return {"train": split(), "calib": split(), "eval": ([[1.0, 2.0], [3.0]], [0, 1])}
def raises(): raise FileNotFoundError("dataset.csv")
def with_nan():
    x, y = split()
    x[3, 1] = np.nan
    return {"train": split(), "calib": split(), "eval": (x, y)}
def strings(): return {"train": split(), "calib": split(), "eval": (np.array([["a"] * 4] * 20), np.zeros(20))}
def labels_out_of_range(): return {"train": split(), "calib": split(), "eval": split(labels=np.full(20, 7))}
def not_a_dict(): return [1, 2, 3]
def exits(): raise SystemExit(3)
"""


def _project(tmp_path: Path, model="good", data="good", shape="[1, 4]", extra="") -> Path:
    (tmp_path / "model.py").write_text(MODEL_PY)
    (tmp_path / "data.py").write_text(DATA_PY)
    (tmp_path / "edgekit.toml").write_text(textwrap.dedent(f"""\
        schema_version = 1
        name = "t"
        outputs = ["logits"]
        {extra}
        [task]
        kind = "classification"
        [model]
        entry = "model.py:{model}"
        [data]
        entry = "data.py:{data}"
        [[inputs]]
        name = "x"
        shape = {shape}
        """))
    return tmp_path


PROJECT_CASES = {
    "dynamic-batch": ({"shape": "[-1, 4]"}, "inputs.0.shape.0"),
    "zero-batch": ({"shape": "[0, 4]"}, "inputs.0.shape.0"),
    "model-entry-raises": ({"model": "raises"}, "model entry 'model.py:raises' raised RuntimeError: weights server"),
    "model-returns-a-dict": ({"model": "returns_dict"}, "returned dict; it must return a tensor or a tuple"),
    "model-returns-a-string": ({"model": "returns_str"}, "returned str; it must return a tensor or a tuple"),
    "model-returns-a-scalar": ({"model": "returns_scalar"}, "output 0 has shape () for 20 samples"),
    "model-entry-not-a-module": ({"model": "not_a_module"}, "returned int, not a torch.nn.Module"),
    "two-d-labels": ({"data": "labels_2d"}, "labels must be a 1-D array of integer class indices"),
    "ragged-arrays": ({"data": "ragged"}, "split 'eval' inputs cannot be an array"),
    "data-entry-raises": ({"data": "raises"}, "data entry 'data.py:raises' raised FileNotFoundError: dataset.csv"),
    "data-entry-exits": ({"data": "exits"}, "data entry 'data.py:exits' raised SystemExit: 3"),
    "nan-in-inputs": ({"data": "with_nan"}, "sample 3 has NaN or infinite values"),
    "string-inputs": ({"data": "strings"}, "must be a numeric array"),
    "labels-beyond-the-outputs": ({"data": "labels_out_of_range"}, "label 7 in the eval split, but the model"),
    "data-not-a-dict": ({"data": "not_a_dict"}, "must return a dict with keys train, calib, eval; it returned list"),
    "duplicate-output-names": ({"extra": 'outputs = ["a", "a"]'}, "'a' appears more than once"),
    "seed-out-of-range": ({"extra": "seed = 99999999999999999999"}, "field 'seed': Input should be less than"),
}


@pytest.mark.parametrize("case", PROJECT_CASES)
def test_a_bad_project_is_a_one_line_error_with_exit_2(case, tmp_path):
    options, message = PROJECT_CASES[case]
    if "extra" in options:  # the top-level key must not repeat: replace the default outputs line instead
        project = _project(tmp_path, **{k: v for k, v in options.items() if k != "extra"})
        text = (project / "edgekit.toml").read_text()
        key = options["extra"].split("=")[0].strip()
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
        lines.insert(2, options["extra"])
        (project / "edgekit.toml").write_text("\n".join(lines) + "\n")
    else:
        project = _project(tmp_path, **options)
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--project", str(project), "--format", "onnx",
                                      "--quant", "none", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.output
    assert not (tmp_path / "out").exists()


def test_a_project_file_that_is_not_utf8_or_not_a_file(tmp_path):
    (tmp_path / "edgekit.toml").write_bytes(b'name = "\xff"\n')
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--project", str(tmp_path), "--dry-run"])
    assert result.exit_code == 2 and "not UTF-8 text" in result.output


def test_project_and_profile_files_may_be_symbolic_links(tmp_path):
    """Trusted configuration kept as links (stow, a monorepo's shared config, Nix) is read through them."""
    (tmp_path / "real").mkdir()
    project = _project(tmp_path / "real")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "edgekit.toml").symlink_to(project / "edgekit.toml")
    for name in ("model.py", "data.py"):
        (linked / name).symlink_to(project / name)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "my-board.toml").write_text((ROOT_DIR / "device_profiles" / "host-cpu.toml").read_text()
                                            .replace('id = "host-cpu"', 'id = "my-board"'))
    (profiles / "my-board-link.toml").symlink_to(profiles / "my-board.toml")
    result = CliRunner().invoke(cli, ["--profiles-dir", str(profiles), "build", "-d", "my-board", "--project",
                                      str(linked), "--format", "onnx", "--dry-run"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["--profiles-dir", str(profiles), "profiles", "show", "my-board-link"])
    assert result.exit_code == 2 and "field 'id' is 'my-board' but the file is named 'my-board-link'" in result.output

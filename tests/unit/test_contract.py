"""The model contract (edgekit_runner.manifest) and the task registry (edgekit_runner.tasks)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from edgekit_runner.manifest import Manifest, ManifestError, MethodSpec, TensorSpec, validate
from edgekit_runner.tasks import TASKS, get_task
from edgekit_runner.tasks.embedding import nearest_neighbours
from manifests import manifest as schema1_manifest

SCHEMA_2 = {
    "schema_version": 2, "kind": "edgekit-bundle", "created_at": "2026-12-01T00:00:00Z",
    "profile": {"id": "host-cpu", "name": "This host"}, "project": {"name": "lm", "model_entry": "hf:m"},
    "task": {"kind": "embedding", "metric": "retrieval_agreement", "min_cosine": 0.98},
    "model": {"file": "model.onnx", "format": "onnx", "backend": "cpu", "runtime": "onnxruntime",
              "precision": "fp32", "bytes": 10},
    "methods": [{"name": "forward", "dims": {"seq": [1, 128]},
                 "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [1, "seq"]},
                            {"name": "attention_mask", "dtype": "int64", "shape": [1, "seq"]}],
                 "outputs": [{"name": "embedding", "dtype": "float32", "shape": [1, 384]}]}],
    "eval": {"file": "eval.npz", "n_samples": 3,
             "arrays": {"input.input_ids": [3, 16], "input.attention_mask": [3, 16], "reference.embedding": [3, 384]}},
    "tokenizer": {"file": "tokenizer.json", "kind": "huggingface-tokenizers"},
    "files": {"model.onnx": {"sha256": "0" * 64, "bytes": 10}, "eval.npz": {"sha256": "1" * 64, "bytes": 5}},
}


def test_specs_round_trip():
    m = MethodSpec("decode", (TensorSpec("tokens", "int64", (1, "seq")),), (TensorSpec("logits", "float32", (1, 9)),),
                   {"seq": (1, 2048)})
    assert MethodSpec.from_dict(m.to_dict()) == m
    assert m.to_dict()["inputs"][0] == {"name": "tokens", "dtype": "int64", "shape": [1, "seq"]}


def test_schema_2_gives_the_typed_face():
    man = validate(copy.deepcopy(SCHEMA_2))
    assert man.task == "embedding" and man.task_options["min_cosine"] == 0.98
    assert [t.name for t in man.forward.inputs] == ["input_ids", "attention_mask"]
    assert man.forward.dims == {"seq": (1, 128)} and man.forward.inputs[0].shape == (1, "seq")
    assert man.eval_inputs == {"input_ids": "input.input_ids", "attention_mask": "input.attention_mask"}
    assert man.eval_references == {"embedding": "reference.embedding"} and man.tokenizer_file == "tokenizer.json"


def test_schema_1_reads_into_the_same_objects():
    man = validate(schema1_manifest())
    assert man.schema_version == 1 and man.task == "classification"
    assert man.forward == MethodSpec("forward", (TensorSpec("image", "float32", (1, 4)),),
                                     (TensorSpec("logits", "float32", (1, 3)),))
    assert man.eval_inputs == {"image": "inputs"} and man.tokenizer_file is None


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["methods"][0]["inputs"][0].update(shape=[1, "len"]), "dimension 'len', which the method does not"),
    (lambda m: m["methods"].append(copy.deepcopy(m["methods"][0])), "each named once"),
    (lambda m: m["methods"][0]["dims"].update(seq=[9, 3]), "bounds [9, 3]"),
    (lambda m: m["eval"]["arrays"].pop("input.attention_mask"), "no 'input.attention_mask'"),
    (lambda m: m["methods"][0]["outputs"][0].update(dtype="complex64"), "expected one of"),
    (lambda m: m["methods"][0]["inputs"][1].update(name="input_ids"), "names a tensor twice"),
    (lambda m: m.pop("task"), "manifest has no 'task'"),
])
def test_schema_2_refuses_what_does_not_agree(edit, message):
    data = copy.deepcopy(SCHEMA_2)
    edit(data)
    with pytest.raises(ManifestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(data)


def test_a_newer_schema_names_both_versions():
    with pytest.raises(ManifestError, match="schema_version 3 is not supported \\(this reader knows 1, 2\\); upgrade"):
        validate(dict(SCHEMA_2, schema_version=3))


def test_registry_is_explicit_and_names_what_it_knows():
    assert set(TASKS) == {"classification", "embedding", "language-model"}
    with pytest.raises(ValueError, match="unknown task 'speech'; this edgekit knows classification, embedding, language-model"):
        get_task("speech")


def test_embedding_scores_cosine_and_nearest_neighbours():
    ref = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]])  # two pairs
    got = ref.copy()
    got[1] = [0.2, 0.98]  # moved into the other pair: its neighbour and sample 3's change, 0's and 2's do not
    m = get_task("embedding").score({"e": got}, {}, {"e": ref})
    assert nearest_neighbours(ref).tolist() == [1, 0, 3, 2] and nearest_neighbours(got).tolist() == [1, 3, 3, 1]
    assert m["retrieval_agreement"] == 0.5 and m["reference_retrieval_agreement"] == 1.0
    expected = (0.99 * 0.2 + 0.14 * 0.98) / (np.hypot(0.99, 0.14) * np.hypot(0.2, 0.98))
    assert m["cosine_min"] == pytest.approx(expected) and m["embedding_dim"] == 2
    judge = get_task("embedding").judge(m, {}, quantized=True)
    assert not judge.passed and "cosine_mean" in judge.reason
    assert get_task("embedding").judge({"cosine_mean": 1.0, "cosine_min": 0.98, "retrieval_agreement": 0.96}, {},
                                       quantized=True).passed
    strict = get_task("embedding").judge({"cosine_mean": 1.0, "cosine_min": 0.98, "retrieval_agreement": 0.96},
                                         {"min_retrieval_agreement": 0.99}, quantized=True)
    assert strict.reason == "retrieval_agreement 0.96 is below the task's min_retrieval_agreement = 0.99"


def test_classification_checks_its_labels():
    task = get_task("classification")
    assert task.check_arrays({"labels": (5,)}, 5) is None
    assert "need 5 integer class indices" in task.check_arrays({"labels": (5, 2)}, 5)
    assert "need integer class indices" in task.check_arrays({"labels": (5,)}, 5, {"labels": "float32"})


def test_manifest_json_is_standard():
    assert '"schema_version": 2' in Manifest(copy.deepcopy(SCHEMA_2)).to_json()

"""edgekit.lm without exporting: the Llama config contract, folders, GGUF checks, the planner, the task's
judgement and the runner's context limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.errors import PlanError, ProjectError
from edgekit.lm.model import Decoder, DecoderConfig, load_folder, save_folder

SMALL = DecoderConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32)


def _hf(**changes) -> dict:
    return {**SMALL.to_hf(), **changes}


@pytest.mark.parametrize("changes, message", [
    ({"architectures": ["MistralForCausalLM"]}, "architecture MistralForCausalLM is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope_type 'llama3' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"attention_bias": True}, "attention_bias = True is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu' is not supported"),
    ({"head_dim": 5}, "heads of size 5 must be of even size"),
])
def test_configs_that_are_not_plain_llama_are_refused_by_name(changes, message):
    with pytest.raises(ProjectError, match=message):
        DecoderConfig.from_hf(_hf(**changes))


def test_rope_theta_is_read_where_transformers_5_keeps_it():
    hf = _hf(rope_parameters={"rope_theta": 12345.0, "rope_type": "default"})
    del hf["rope_theta"]
    config = DecoderConfig.from_hf(hf)
    assert config.rope_theta == 12345.0 and config.to_hf()["rope_parameters"]["rope_theta"] == 12345.0


@pytest.mark.parametrize("tied", [True, False])
def test_a_folder_round_trips_with_transformers_names(tied, tmp_path):
    from dataclasses import replace

    torch.manual_seed(0)
    model = Decoder(replace(SMALL, tie_word_embeddings=tied)).eval()
    save_folder(model, tmp_path)
    names = set(json.loads((tmp_path / "config.json").read_text()))
    assert {"architectures", "hidden_size", "num_key_value_heads", "rope_parameters"} <= names
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "model.layers.1.self_attn.k_proj.weight" in keys and "model.embed_tokens.weight" in keys
    assert ("lm_head.weight" in keys) is not tied  # a tied output layer is stored once, as transformers does
    again = load_folder(tmp_path)
    x = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_weights_of_another_shape_are_named(tmp_path):
    from dataclasses import replace

    save_folder(Decoder(replace(SMALL, intermediate_size=40)), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(SMALL.to_hf()))
    with pytest.raises(ProjectError, match=r"layers.0.mlp.down_proj.weight has shape \[32, 40\], the config says \[32, 48\]"):
        load_folder(tmp_path)


def test_the_decoder_is_causal_and_bounded():
    torch.manual_seed(0)
    model = Decoder(SMALL).eval()
    x = torch.randint(0, 64, (1, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 5) % 64
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6) and not torch.allclose(a[:, 8:], b[:, 8:])
    with pytest.raises(ValueError, match="33 tokens, more than the model's maximum context of 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("heads,kv", [(9, 3), (4, 4)])
def test_grouped_attention_without_repeated_heads_computes_the_same(heads, kv):
    """The ONNX and LiteRT exports' attention (grouped query heads as rows of one matmul per K/V head) against
    the repeated-heads attention of the eager model, with a cache longer than the positions written so far."""
    from edgekit.lm.model import grouped_sdpa, sdpa

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 5, heads, 16), torch.randn(1, 12, kv, 16), torch.randn(1, 12, kv, 16)
    pos = torch.arange(3, 8)  # queries at positions 3..7 over a 12-slot cache
    mask = torch.where(torch.arange(12)[None, :] <= pos[:, None], 0.0, float("-inf"))
    want = sdpa(q, k, v, mask)
    assert torch.allclose(grouped_sdpa(q, k, v, mask), want, atol=1e-6)
    k2 = k.clone()
    k2[:, 8:] += 100.0  # slots beyond the last position are masked: garbage there changes nothing
    assert torch.allclose(grouped_sdpa(q, k2, v, mask), want, atol=1e-6)
    k2[:, 7, 0] += 1.0  # but the last written slot of K/V head 0 changes exactly that head's group of queries
    moved = (grouped_sdpa(q, k2, v, mask) - want).abs().amax(dim=(0, 1, 3)) > 1e-4
    assert moved.tolist() == [h < heads // kv for h in range(heads)]


def _write_gguf(path, arch: str) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(128, dtype=np.float32).reshape(16, 8))
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_file_is_checked_before_conversion(tmp_path):
    from edgekit.lm.gguf import check_gguf

    good, other = tmp_path / "good.gguf", tmp_path / "other.gguf"
    _write_gguf(good, "llama")
    _write_gguf(other, "gpt2")
    assert check_gguf(good) == "llama"
    with pytest.raises(ProjectError, match="GGUF architecture 'gpt2' is not supported; edgekit converts llama"):
        check_gguf(other)
    data = good.read_bytes()
    for keep in (2, 40, len(data) // 2, len(data) - 8):  # cut in the magic, the header, the tensors, the end
        cut = tmp_path / f"cut-{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(ProjectError, match="truncated|not a GGUF file"):
            check_gguf(cut)
    (tmp_path / "text.gguf").write_text("hello world, not a model")
    with pytest.raises(ProjectError, match="not a GGUF file"):
        check_gguf(tmp_path / "text.gguf")


def test_the_planner_builds_language_models_fp32_on_cpu_paths():
    from edgekit.plan import make_plan
    from edgekit.profiles import load_profile

    plan = make_plan(load_profile("pixel8"), task="language-model", quant="auto")
    assert (plan.format, plan.backend, plan.precision) == ("executorch", "xnnpack", "fp32")
    assert plan.stages == ("load", "export", "validate", "bundle") and plan.task == "language-model"
    assert make_plan(load_profile("host-cpu"), "onnx", task="language-model").backend == "cpu"
    with pytest.raises(PlanError, match="--quant int8-qat is not built for language models"):
        make_plan(load_profile("pixel8"), task="language-model", quant="int8-qat")
    kd = make_plan(load_profile("pixel8"), task="language-model", quant="int4-weight-only", distill=True)
    assert kd.distill and kd.stages == ("load", "distill", "export", "validate", "quantize", "validate", "bundle")
    with pytest.raises(PlanError, match="a language model builds for executorch/xnnpack, onnx/cpu, tflite/xnnpack"):
        make_plan(load_profile("pixel8"), backend="vulkan", task="language-model")


def test_the_planner_quantizes_language_models_with_the_projects_settings():
    from edgekit.plan import make_plan
    from edgekit.profiles import load_profile
    from edgekit.project import LanguageModelSpec
    from edgekit.quantize.schemes import LMWeights, scheme_from_dict

    spec = LanguageModelSpec(prompt="x", quantize={"accuracy_level": 0, "output": "float"})
    plan = make_plan(load_profile("host-cpu"), "onnx", task="language-model", quant="int4-weight-only",
                     group_size=64, language_model=spec)
    assert plan.stages == ("load", "export", "validate", "quantize", "validate", "bundle")
    assert plan.precision == "int4-weight" and plan.quant == "int4-weight-only"
    scheme = scheme_from_dict(plan.quant_scheme)
    assert scheme == LMWeights(bits=4, group_size=64, embedding="int8", output="float", accuracy_level=0)
    plan = make_plan(load_profile("pixel8"), task="language-model", quant="int8")  # int8 means weights here
    assert plan.quant == "int8-weight-only" and plan.precision == "int8-weight"
    assert any("int8-weight-only" in n for n in plan.notes)
    with pytest.raises(PlanError, match="LiteRT's int4 blocks are 32, 64, 128 or 256"):
        make_plan(load_profile("pixel8"), "tflite", task="language-model", quant="int4-weight-only", group_size=16)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        LMWeights(bits=2)
    asymmetric = LanguageModelSpec(prompt="x", quantize={"asymmetric": True})
    plan = make_plan(load_profile("host-cpu"), "onnx", task="language-model", quant="int4-weight-only",
                     language_model=asymmetric)
    assert scheme_from_dict(plan.quant_scheme).asymmetric is True
    plan = make_plan(load_profile("pixel8"), "executorch", task="language-model", quant="int4-weight-only",
                     language_model=asymmetric)
    assert scheme_from_dict(plan.quant_scheme).asymmetric is True  # the block offsets beside 8da4w
    plan = make_plan(load_profile("pixel8"), "tflite", task="language-model", quant="int4-weight-only",
                     language_model=asymmetric)
    assert scheme_from_dict(plan.quant_scheme).asymmetric is True  # the split, through dequantized-weight recovery
    plan = make_plan(load_profile("pixel8"), "executorch", task="language-model", quant="int8-weight-only",
                     language_model=asymmetric)  # int4 only
    assert scheme_from_dict(plan.quant_scheme).asymmetric is False
    # SmoothQuant: on by default (alpha 0.5) for ExecuTorch's int8, whose activations are int8 too; not elsewhere
    assert scheme_from_dict(plan.quant_scheme).smoothquant == 0.5 and any("SmoothQuant" in n for n in plan.notes)
    for fmt, quant in (("executorch", "int4-weight-only"), ("onnx", "int8-weight-only"), ("tflite", "int8-weight-only")):
        plan = make_plan(load_profile("pixel8"), fmt, task="language-model", quant=quant,
                         language_model=LanguageModelSpec(prompt="x"))
        assert scheme_from_dict(plan.quant_scheme).smoothquant == 0.0, (fmt, quant)
    off = LanguageModelSpec(prompt="x", quantize={"smoothquant": 0})
    plan = make_plan(load_profile("pixel8"), "executorch", task="language-model", quant="int8-weight-only",
                     language_model=off)
    assert scheme_from_dict(plan.quant_scheme).smoothquant == 0.0 and not any("SmoothQuant" in n for n in plan.notes)
    with pytest.raises(ValueError, match="smoothquant"):
        LanguageModelSpec(prompt="x", quantize={"smoothquant": 1.5})
    plan = make_plan(load_profile("host-cpu"), "onnx", task="language-model", quant="int4-weight-only",
                     language_model=LanguageModelSpec(prompt="x", quantize={"hqq": True}))
    assert scheme_from_dict(plan.quant_scheme).hqq is False and any("hqq applies to ExecuTorch" in n for n in plan.notes)


def test_the_task_judges_greedy_agreement_and_perplexity():
    from edgekit_runner.tasks import get_task
    from edgekit_runner.tasks.language_model import greedy_agreement

    assert greedy_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == 0.5  # up to the first difference, not after it
    task = get_task("language-model")
    m = task.score({"greedy": np.array([1, 2, 3, 4]), "perplexity": np.asarray(10.5)},
                   {"greedy_reference": np.array([[1, 2, 3, 5]]), "reference_perplexity": np.asarray(10.0)}, None)
    assert m["greedy_agreement"] == 0.75 and m["perplexity_increase"] == pytest.approx(0.05)
    assert "after 3 of 4 tokens" in task.judge(m, {}, quantized=False).reason
    assert task.judge(m, {}, quantized=True).passed  # quantized: the perplexity budget (10%) only
    assert "max_perplexity_increase = 0.01" in task.judge({**m, "greedy_agreement": 1.0}, {}, False).reason


def test_the_runner_refuses_more_tokens_than_the_context():
    from edgekit_runner import lm

    class Echo(lm.Session):
        def _feed(self, tokens):
            return np.eye(8)[tokens % 8]

    s = Echo({"max_context": 10, "vocab_size": 8, "eos_ids": [0]})
    out = lm.generate(s, [1, 2, 3], 100, stop_at_eos=False)  # stops at the context, not past it
    assert len(out.tokens) == 7 and s.pos == 9
    with pytest.raises(lm.ContextFull, match="12 tokens do not fit the model's maximum context of 10"):
        s.reset() or s.feed(list(range(12)))
    with pytest.raises(lm.ContextFull, match="a prompt of 10 tokens leaves no room"):
        lm.generate(s, list(range(10)), 4)


def test_the_teachers_top_k_logits_are_computed_once_and_cached(tmp_path, monkeypatch):
    """edgekit.lm.distill keeps the teacher's k largest logits per token (fp16 values, int32 indices), on disk
    keyed by the teacher's weights, the windows and k: a second call does not run the teacher."""
    from edgekit.distill import DistillError
    from edgekit.lm.distill import teacher_top_k, top_k_mass

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    torch.manual_seed(0)
    teacher = Decoder(DecoderConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32)).eval()
    windows = np.random.default_rng(0).integers(0, 64, (5, 17))
    values, indices, log_norm = teacher_top_k(teacher, windows, 8, 2.0, batch=2)
    assert values.shape == indices.shape == (5, 16, 8) and values.dtype == np.float16 and indices.dtype == np.int32
    with torch.no_grad():
        logits = teacher(torch.from_numpy(windows[:, :-1]))
    top = torch.topk(logits, 8)
    np.testing.assert_allclose(values, top.values.numpy(), rtol=1e-3)
    np.testing.assert_allclose(log_norm, torch.logsumexp(logits / 2, -1).numpy(), rtol=1e-4)
    assert (indices == top.indices.numpy()).mean() > 0.99  # fp16 may reorder near-ties only
    assert len(list((tmp_path / "lm-teacher-top-k").glob("*.npz"))) == 1

    def no_forward(*_):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(teacher, "forward", no_forward)
    again = teacher_top_k(teacher, windows, 8, 2.0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (values, indices, log_norm)))
    for k, t in ((4, 2.0), (8, 1.0)):  # another k or temperature, or other weights: computed afresh
        with pytest.raises(AssertionError, match="ran again"):
            teacher_top_k(teacher, windows, k, t)
    with torch.no_grad():
        teacher.model.norm.weight.mul_(2)
    with pytest.raises(AssertionError, match="ran again"):
        teacher_top_k(teacher, windows, 8, 2.0)
    with pytest.raises(DistillError, match="top_k = 65: must be between 1 and the teacher's vocabulary"):
        teacher_top_k(teacher, windows, 65)
    # the share of the teacher's probability in its top k, exact: 1 when k is the vocabulary
    p = torch.softmax(logits / 2, -1)
    assert top_k_mass(values, log_norm, 2.0) == pytest.approx(p.topk(8).values.sum(-1).mean().item(), rel=1e-3)
    whole = teacher_top_k(Decoder(teacher.config).eval(), windows, 64, 2.0, cache=False)
    assert top_k_mass(whole[0], whole[2], 2.0) == pytest.approx(1.0, abs=1e-6)

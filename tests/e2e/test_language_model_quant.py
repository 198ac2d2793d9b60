"""Language-model quantization end to end (issue 12): the tiny trained decoder (tests/conftest.py
tiny_lm_project) built with ``--quant int4-weight-only`` and ``int8-weight-only`` in each format, each by the
backend's own tool (torchao for ExecuTorch, MatMulNBits for ONNX Runtime, ai-edge-quantizer for LiteRT),
validated in its runtime against PyTorch fp32 (perplexity, greedy agreement), with the bits per weight read
back from the artifact; and the requests the planner refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import cli

pytestmark = pytest.mark.slow
FORMATS = ("executorch", "onnx", "tflite")


@pytest.fixture(scope="module")
def quantized(tiny_lm_project, tmp_path_factory):
    """quantized(fmt, quant) -> the tiny LM's bundle for pixel8, built once per module."""
    cache: dict[tuple[str, str], Path] = {}
    base = tmp_path_factory.mktemp("lm-quant")

    def build(fmt: str, quant: str) -> Path:
        if (fmt, quant) not in cache:
            out = base / f"{fmt}-{quant}"
            result = CliRunner().invoke(cli, ["build", "--device", "pixel8", "--format", fmt, "--quant", quant,
                                              "--project", str(tiny_lm_project), "--out", str(out)],
                                        catch_exceptions=False)
            assert result.exit_code == 0, result.output
            cache[fmt, quant] = out
        return cache[fmt, quant]

    return build


@pytest.mark.parametrize("fmt", FORMATS)
def test_int4_in_each_format_keeps_the_model_and_shrinks_its_weights(fmt, quantized, lm_built):
    bundle = quantized(fmt, "int4-weight-only")
    m = edgekit.Bundle.open(bundle).manifest.data
    q = m["model"]["export_details"]["quantization"]
    assert q["scheme"] == "lm-weights" and q["bits"] == 4 and q["stored_bits"]["file_bytes"] == m["model"]["bytes"]
    assert q["stored_bits"]["file_bits_per_parameter"] > 0 and q["group_size"] == 32 and q["embedding"] == q["output"] == "int8"
    assert m["model"]["precision"] == "int4-weight"
    v, base = m["validation"], m["baseline"]
    assert v["passed"] and base["precision"] == "fp32" and base["validation"]["passed"]
    met = v["metrics"]
    # the tiny model's weights are int4 now: its perplexity moves, but by little (the task's 10% limit holds)
    assert 0 < abs(met["perplexity_increase"]) <= 0.10 and 0 <= met["greedy_agreement"] <= 1
    assert met["max_abs_logit_error"] > 0  # it really is another model
    fp32 = edgekit.Bundle.open(lm_built(fmt)).manifest.data
    assert m["model"]["bytes"] < 0.6 * fp32["model"]["bytes"], (m["model"]["bytes"], fp32["model"]["bytes"])
    if fmt == "onnx":  # MatMulNBits: 4 bits + one fp16 scale per 32 weights = 4.5 bits; the output layer 8 + 0.5
        import onnx

        assert q["stored_bits"]["bits_per_weight"] == {"int4": 4.5, "int8": 8.5}
        graph = onnx.load(str(bundle / "model.onnx")).graph  # the scales fp16 in the file, cast for MatMulNBits
        casts = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast"}
        halves = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
        assert all(casts.get(n.input[2]) in halves for n in graph.node if n.op_type == "MatMulNBits")
        assert q["accuracy_level"] == 4 and q["matmulnbits_nodes"] == 2 * 7 + 1
    if fmt == "tflite":  # 4 bits + one fp16 scale per block of 32; the tied table int8 + an fp32 scale per row
        bits = q["stored_bits"]["bits_per_weight"]
        assert bits["int4"] == 4.5 and 8.0 < bits["int8"] < 9.0, bits
    out = edgekit.Bundle.open(bundle).generate("The for statement", max_new_tokens=8, stop_at_eos=False)
    assert len(out.tokens) == 8 and out.decode_tokens_per_s > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_asymmetric_int4_runs_the_block_offsets_and_is_no_worse(fmt, tiny_lm_project, quantized, tmp_path):
    """[language_model.quantize] asymmetric = true: each block from its minimum to its maximum, as the backend's
    symmetric int4 (MatMulNBits; ExecuTorch's 8da4w; LiteRT's blockwise int4 through dequantized-weight
    recovery) on the block-centred weights plus per-block offsets (tests/integration/test_lm_quant_grid.py
    shows it keeps a Q4_1 grid); here the build, its validation in the runtime and the bits it stores."""
    import shutil

    import onnx

    project = Path(shutil.copytree(tiny_lm_project, tmp_path / "project"))
    (project / "edgekit.toml").write_text((project / "edgekit.toml").read_text()
                                          + "\n[language_model.quantize]\nasymmetric = true\n")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["build", "--device", "pixel8", "--format", fmt, "--quant",
                                      "int4-weight-only", "--project", str(project), "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    m = edgekit.Bundle.open(out).manifest.data
    q = m["model"]["export_details"]["quantization"]
    assert q["asymmetric"] is True and "asymmetric" in q["linear_layers"] and m["validation"]["passed"]
    symmetric_bundle = edgekit.Bundle.open(quantized(fmt, "int4-weight-only")).manifest.data
    if fmt == "onnx":
        assert q["stored_bits"]["bits_per_weight"] == {"int4": 5.0, "int8": 8.5}  # + an fp16 minimum per 32 weights
        graph = onnx.load(str(out / "model.onnx")).graph
        assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 2 * 7 + 1
        assert sum(n.op_type == "Add" and n.name.endswith("_add_offset") for n in graph.node) == 2 * 7
    elif fmt == "tflite":  # + an fp16 offset per 32 weights; the output layer as in the symmetric build
        bits = q["stored_bits"]["bits_per_weight"]
        assert bits == {**symmetric_bundle["model"]["export_details"]["quantization"]["stored_bits"]["bits_per_weight"],
                        "int4": 5.0}, bits
    else:  # an int8 offset per block of 32 weights (8da8w): 0.25 bits per body weight more in the file than
        # symmetric 8da4w, and more: their scales, the ones of the block sums, and XNNPACK's packing of this tiny
        # model's [out, 2] offset matrices
        body = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)  # the test decoder's linear layers (tests/conftest.py)
        extra = m["model"]["bytes"] - symmetric_bundle["model"]["bytes"]
        print(f"asymmetric .pte: {extra} bytes more than symmetric; int8 offsets {body // 32}")
        assert body / 32 <= extra <= body / 2, (extra, body / 32)
    symmetric = symmetric_bundle["validation"]["metrics"]
    asym = m["validation"]["metrics"]
    # no worse = its perplexity is not higher than symmetric int4's (both against the same fp32 reference). Not
    # abs(): the test's tiny model is trained on the fly, and on an AVX-512 host its asymmetric int4 came out
    # 0.125% *below* fp32's perplexity (symmetric: -0.005%), which abs() counted as worse
    assert asym["perplexity_increase"] <= symmetric["perplexity_increase"], (asym, symmetric)


def test_distil_then_int4_ships_the_kd_student_quantized(tiny_lm_project, lm_built, tmp_path, monkeypatch):
    """A [teacher] makes the build distil first (token-level KD on the teacher's top-k logits, the best epoch
    by calib perplexity), then quantize the distilled student to int4 and validate it against the student's
    own PyTorch reference. The teacher here is the project's own trained model, so the record's teacher and
    model-entry perplexities must be the same number; the short KD run is worse than both, and ships only because
    the project says `ship = "student"`."""
    import shutil

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    project = Path(shutil.copytree(tiny_lm_project, tmp_path / "project"))
    (project / "edgekit.toml").write_text((project / "edgekit.toml").read_text() + """
[teacher]
entry = "model.py:tiny"

[distill]
epochs = 3
batch_size = 16
temperature = 2.0
alpha = 0.5
top_k = 16
ship = "student"
""")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["build", "--device", "host-cpu", "--format", "onnx", "--quant",
                                      "int4-weight-only", "--project", str(project), "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "distilled: token-level hinton KD T=2 α=0.5 on the teacher's top 16 logits" in " ".join(result.output.split())
    m = edgekit.Bundle.open(out).manifest.data
    d = m["distill"]
    assert d["task"] == "language-model" and d["top_k"] == 16 and d["best_epoch_chosen_on"] == "calib"
    assert d["teacher_perplexity"] == pytest.approx(d["original_student_perplexity"], rel=1e-9)
    assert 0 < d["teacher_top_k_mass"] < 1 and 1 <= d["best_epoch"] <= 3
    assert d["teacher_perplexity"] < d["student_perplexity"] < 1000  # learnt the text (untrained: ~2,000)
    chosen = d["selection"]  # worse than the model entry on calib, but the project says ship the student
    assert chosen["shipped"] == "distilled" and chosen["metric"] == "perplexity" and chosen["split"] == "calib"
    assert chosen["distilled"] > chosen["model"] and chosen["p_value"] > 0.5
    assert m["plan"]["stages"] == ["load", "distill", "export", "validate", "quantize", "validate", "bundle"]
    # what ships is the distilled student, int4: its reference is not the model entry's
    assert m["model"]["precision"] == "int4-weight" and m["validation"]["passed"]
    fp32_entry = edgekit.Bundle.open(lm_built("onnx")).manifest.data["language_model"]["reference_perplexity"]
    assert m["language_model"]["reference_perplexity"] > 1.05 * fp32_entry
    assert len(list((tmp_path / "cache" / "lm-teacher-top-k").glob("*.npz"))) == 1


@pytest.mark.parametrize("table,extra,message", [
    ('[distill]\nmethod = "cosine"\n', "", "method 'cosine': a language model distils with method = \"hinton\""),
    ("[distill]\ntop_k = 0\n", "", "top_k"),
    ("", "\n\ndef other_vocabulary():\n    from edgekit.lm.model import Decoder, DecoderConfig\n"
         "    return Decoder(DecoderConfig(vocab_size=1024, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,"
         " num_key_value_heads=1, intermediate_size=32, max_position_embeddings=128))\n",
     "the teacher's vocabulary (1024) is not the student's (2048); token-level KD needs the same tokenizer"),
], ids=["embedding-loss", "top-k-zero", "other-vocabulary"])
def test_a_distillation_that_cannot_work_for_a_language_model_is_refused(table, extra, message, tiny_lm_project,
                                                                         tmp_path):
    import shutil

    project = Path(shutil.copytree(tiny_lm_project, tmp_path / "project"))
    teacher = "other_vocabulary" if extra else "tiny"
    (project / "edgekit.toml").write_text((project / "edgekit.toml").read_text()
                                          + f'\n[teacher]\nentry = "model.py:{teacher}"\n' + table)
    (project / "model.py").write_text((project / "model.py").read_text() + extra)
    result = CliRunner().invoke(cli, ["build", "--device", "host-cpu", "--format", "onnx", "--project", str(project),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_weight_only_is_within_one_percent_of_fp32(fmt, quantized):
    m = edgekit.Bundle.open(quantized(fmt, "int8-weight-only")).manifest.data
    met = m["validation"]["metrics"]
    assert abs(met["perplexity_increase"]) <= 0.01 and met["greedy_agreement"] > 0.5, met
    q = m["model"]["export_details"]["quantization"]
    assert q["bits"] == 8 and m["model"]["precision"] == "int8-weight"
    if fmt == "onnx":  # MatMulNBits 8 bits per block of 32 with an fp16 scale
        assert q["stored_bits"]["bits_per_weight"] == {"int8": 8.5}
    if fmt == "tflite":  # per channel: an fp32 scale per output row
        assert 8.0 < q["stored_bits"]["bits_per_weight"]["int8"] < 9.0
    if fmt == "executorch":  # 8da8w quantizes the activations too: SmoothQuant first, measured on calib
        assert q["smoothquant"] == 0.5 and q["linear_layers"].endswith("SmoothQuant alpha 0.5 first")
        assert q["smoothing"]["calib_windows"] == 8 and q["smoothing"]["layers"] == 2 * 6 + 1
    else:
        assert q["smoothquant"] == 0.0


def test_bench_of_an_int4_bundle_stores_its_figures(quantized, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["bench", str(quantized("executorch", "int4-weight-only")), "--on", "local",
                                      "--", "--runs", "3", "--min-seconds", "0", "--warmup-seconds", "0"])
    assert result.exit_code == 0, result.output
    from edgekit.results.store import ResultsStore

    stored = ResultsStore(tmp_path / "results.db").list_runs()[0].metrics
    assert stored["decode_tokens_per_s"] > 0 and stored["perplexity"] > 1


@pytest.mark.parametrize("args, message", [
    (["--quant", "int8-qat"], "--quant int8-qat is not built for language models"),
    (["--format", "tflite", "--quant", "int4-weight-only", "--group-size", "48"], "LiteRT's int4 blocks are 32"),
    (["--format", "onnx", "--quant", "int4-weight-only", "--group-size", "24"], "power of two"),
    (["--format", "executorch", "--quant", "int4-weight-only", "--group-size", "48"], "does not divide"),
])
def test_impossible_language_model_quantization_is_refused(args, message, tiny_lm_project, tmp_path):
    result = CliRunner().invoke(cli, ["build", "--device", "pixel8", "--project", str(tiny_lm_project),
                                      "--out", str(tmp_path / "out"), *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "out").exists()

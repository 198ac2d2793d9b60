"""The runner's own pieces: int8 I/O, batching, statistics, stop rules, memory, device facts, ORT fallbacks, report."""

from __future__ import annotations

import sys

import dataclasses
import hashlib
import json
import math
import mmap
import os
import platform

import numpy as np
import pytest
from edgekit_runner import evaluate, measure, memory, runtimes, sysinfo
from edgekit_runner.__main__ import main
from edgekit_runner.report import FIELDS, MODEL_ERROR, OK, SCHEMA_VERSION, RunReport
from edgekit_runner.runtimes import LoadedModel, TensorInfo, _dequantize, _quantize
from edgekit_runner.tasks.base import agreement
from manifests import list_files, manifest


def test_int8_quantize_uses_tensor_params():
    detail = {"dtype": np.int8, "quantization": (0.5, -3)}
    x = np.array([-100.0, -1.0, 0.0, 0.25, 0.26, 1.0, 100.0], np.float32)
    q = _quantize(x, detail)
    assert q.dtype == np.int8
    # round(x/0.5) half to even, then + zero point (-3), clamped: 0.25/0.5 = 0.5 rounds to 0
    assert q.tolist() == [-128, -5, -3, -3, -2, -1, 127]
    assert _dequantize(q, detail).tolist() == [-62.5, -1.0, 0.0, 0.0, 0.5, 1.0, 65.0]


def test_float_tensors_pass_through():
    detail = {"dtype": np.float32, "quantization": (0.0, 0)}
    x = np.array([1.5], np.float32)
    assert _quantize(x, detail) is x and _dequantize(x, detail) is x


def test_run_dataset_pads_last_batch_and_drops_padding():
    seen = []

    def run(arrays):
        seen.append(arrays[0].shape)
        return [arrays[0].reshape(len(arrays[0]), -1).sum(axis=1, keepdims=True)]

    model = LoadedModel(run, [TensorInfo("x", [4, 2], "float32")], [TensorInfo("y", [4, 1], "float32")])
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    (out,) = evaluate.run_dataset(model, x)
    assert seen == [(4, 2)] * 3
    assert out[:, 0].tolist() == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37]


# ---------------------------------------------------------------- statistics and stop rules

def test_latency_stats_on_known_samples():
    # 1..101 ms: every percentile is an exact sample (index q/100 * 100)
    stats = measure.latency_stats([int(ms * 1e6) for ms in range(1, 102)])
    assert stats["n"] == 101 and stats["min"] == 1.0 and stats["max"] == 101.0
    assert (stats["p50"], stats["p90"], stats["p99"]) == (51.0, 91.0, 100.0)
    assert stats["median"] == stats["p50"] and stats["mean"] == 51.0
    # population std of 1..n is sqrt((n^2 - 1) / 12)
    assert stats["std"] == pytest.approx(math.sqrt((101**2 - 1) / 12))
    # 4 samples: p90 interpolates between the 3rd and 4th (linear, as numpy's default)
    four = measure.latency_stats([1_000_000, 2_000_000, 3_000_000, 10_000_000])
    assert four["p50"] == 2.5 and four["p90"] == pytest.approx(3 + 0.7 * 7)
    assert four["std"] == pytest.approx(np.std([1, 2, 3, 10]))


def test_latency_stats_match_numpy_on_random_samples():
    samples = np.random.default_rng(0).integers(10_000, 5_000_000, size=997)
    stats = measure.latency_stats(samples.tolist())
    ms = samples / 1e6
    for q in (50, 90, 99):
        assert stats[f"p{q}"] == pytest.approx(np.percentile(ms, q), rel=1e-12)
    assert stats["mean"] == pytest.approx(ms.mean()) and stats["std"] == pytest.approx(ms.std())
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    with pytest.raises(ValueError):
        measure.latency_stats([])


class FakeModel:
    """A clock that only the model moves: each call takes the next duration (ns) from a cycle."""

    def __init__(self, *durations_ms: float) -> None:
        self.now, self.calls = 0, 0
        self.durations = [int(d * 1e6) for d in durations_ms]

    def clock(self) -> int:
        return self.now

    def __call__(self) -> None:
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_stop_rule_duration_dominates_for_a_fast_model():
    m = FakeModel(3.0)  # 50 runs take 0.15 s: the 1 s minimum decides
    phase = measure.repeat(m, 50, 1.0, 60.0, m.clock)
    assert len(phase.samples_ns) == math.ceil(1.0 / 0.003) and not phase.capped
    assert phase.elapsed_ns >= 1e9 and phase.elapsed_ns - 3_000_000 < 1e9  # one run fewer would not do


def test_stop_rule_count_dominates_for_a_slow_model():
    m = FakeModel(100.0)  # 1 s passes after 10 runs: the 50-run minimum decides
    phase = measure.repeat(m, 50, 1.0, 60.0, m.clock)
    assert len(phase.samples_ns) == 50 and phase.elapsed_ns == 5_000_000_000 and not phase.capped


def test_stop_rule_cap_is_honoured_and_reported():
    m = FakeModel(1000.0)  # 1 s a run, at most 5 s: 5 runs, minimums not met
    phase = measure.repeat(m, 50, 1.0, 5.0, m.clock)
    assert len(phase.samples_ns) == 5 and phase.capped


def test_measure_phases_and_stats_with_fake_clock():
    m = FakeModel(7.0, 1.0, 2.0, 3.0)  # the first call (7 ms) is the first inference
    settings = measure.Settings(warmup_runs=3, warmup_seconds=0.0, min_runs=30, min_seconds=0.0)
    timing, stats = measure.measure(m, settings, m.clock)
    assert timing["first_inference_ms"] == 7.0
    assert timing["warmup_runs"] == 3 and timing["warmup_seconds"] == pytest.approx(0.006)
    assert timing["timed_runs"] == stats["n"] == 30 and m.calls == 34
    # timed runs cycle 7,1,2,3 from the 5th call: 8 sevens, 8 ones, 7 twos, 7 threes -> p50 between 2 and 3
    assert stats["min"] == 1.0 and stats["max"] == 7.0 and stats["p50"] == 2.5
    assert timing["settings"] == {"warmup_runs": 3, "warmup_seconds": 0.0, "min_runs": 30, "min_seconds": 0.0,
                                  "max_seconds": 60.0}
    assert not timing["capped"]


def test_no_warmup_when_both_warmup_minimums_are_zero():
    m = FakeModel(1.0)
    timing, stats = measure.measure(m, measure.Settings(warmup_runs=0, warmup_seconds=0, min_runs=5, min_seconds=0),
                                    m.clock)
    assert timing["warmup_runs"] == 0 and stats["n"] == 5 and m.calls == 6


@pytest.mark.parametrize("kwargs,message", [({"min_runs": 0}, "--runs must be >= 1"),
                                            ({"max_seconds": 0}, "--max-seconds must be > 0"),
                                            ({"warmup_seconds": -1}, "must be >= 0")])
def test_settings_refuse_nonsense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measure.Settings(**kwargs)


def test_cli_refuses_bad_settings_with_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--cpus", "a,b"])
    assert e.value.code == 2 and "--cpus 'a,b' is not a CPU list" in capsys.readouterr().err


def test_parse_cpus():
    assert measure.parse_cpus("0,1,4-6") == [0, 1, 4, 5, 6]
    assert measure.parse_cpus(" 3 ") == [3]
    for bad in ("", "x", "-1", "2-x"):
        with pytest.raises(ValueError):
            measure.parse_cpus(bad)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="hardware/OS: no CPU affinity on this platform")
def test_pin_cpus_applies_and_says_when_it_cannot(monkeypatch):
    before = os.sched_getaffinity(0)
    try:
        one = [min(before)]
        assert measure.pin_cpus(one) == {"requested": one, "applied": True, "affinity": one}
        assert os.sched_getaffinity(0) == set(one)
        refused = measure.pin_cpus([10_000])  # no such CPU
        assert not refused["applied"] and "sched_setaffinity([10000]) failed" in refused["reason"]
    finally:
        os.sched_setaffinity(0, before)
    monkeypatch.delattr(os, "sched_setaffinity")
    missing = measure.pin_cpus([0])
    assert not missing["applied"] and "no sched_setaffinity" in missing["reason"]


# ---------------------------------------------------------------- memory

@pytest.mark.skipif(not memory.PROC_STATUS.exists(), reason="hardware/OS: no /proc (not Linux/Android)")
def test_memory_peak_resets_and_sees_an_allocation():
    probe = memory.MemoryProbe()
    probe.rss("before")
    probe.reset_peak()
    # 64 MiB of fresh pages, touched, then unmapped: an mmap of its own, so no allocator can hand back memory
    # that is already resident (after a large model was freed in this process, numpy's could)
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(b"\1" * (64 * 2**20))
    block.close()
    probe.peak("peak")
    probe.rss("after")
    v = probe.result()
    assert v["unavailable"] == {}
    assert v["before"] > 0 and v["after"] > 0
    assert v["peak"] - v["before"] >= 60  # the freed 64 MiB is still in the high-water mark
    assert v["after"] < v["peak"] - 30  # ... but no longer resident


def test_memory_unavailable_without_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "PROC_STATUS", tmp_path / "no-status")
    monkeypatch.setattr(memory, "PROC_CLEAR_REFS", tmp_path / "no-dir" / "clear_refs")
    probe = memory.MemoryProbe()
    probe.rss("baseline_rss_mb")
    probe.reset_peak()
    probe.peak("peak_rss_load_mb")
    probe.file_size("model_file_bytes", tmp_path / "missing.onnx")
    v = probe.result()
    assert v["baseline_rss_mb"] is None and v["peak_rss_load_mb"] is None and v["model_file_bytes"] is None
    assert "cannot read" in v["unavailable"]["baseline_rss_mb"]
    assert "could not be isolated" in v["unavailable"]["peak_rss_load_mb"]
    assert "cannot stat" in v["unavailable"]["model_file_bytes"]


def test_memory_peak_never_reset_is_unavailable_not_a_lifetime_peak():
    probe = memory.MemoryProbe()
    probe.peak("peak")
    assert probe.result()["peak"] is None and "never reset" in probe.result()["unavailable"]["peak"]


# ---------------------------------------------------------------- device facts

def test_sysinfo_on_this_host():
    facts = sysinfo.collect()
    assert facts["python"] == platform.python_version() and facts["os"] == platform.system()
    assert facts["arch"] == platform.machine() and facts["cores_logical"] == os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert facts["cores_affinity"] == len(os.sched_getaffinity(0))
    for name, value in facts.items():  # nothing silently missing: every None has its reason
        assert (value is None) == (name in facts["unavailable"]), name
    if facts["os"] == "Linux":
        assert facts["mem_total_mb"] > 0 and facts["cpu_model"]
    assert set(facts) == {k.split(".", 1)[1] for k in FIELDS if k.startswith("device.")}


def test_sysinfo_reads_an_arm_board(monkeypatch, tmp_path):
    """A Raspberry Pi 5's /proc and /sys, as files: four Cortex-A76 cores, no 'model name' line."""
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (proc / "device-tree").mkdir(parents=True)
    core = "processor\t: {i}\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n\n"
    (proc / "cpuinfo").write_text("".join(core.format(i=i) for i in range(4)) + "Model\t: Raspberry Pi 5\n")
    (proc / "device-tree" / "model").write_text("Raspberry Pi 5 Model B Rev 1.0\x00")
    (proc / "meminfo").write_text("MemTotal:        8245104 kB\nMemFree: 1 kB\n")
    for i, gov in enumerate(["ondemand", "performance"]):
        d = sys_ / "devices" / "system" / "cpu" / f"cpu{i}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_governor").write_text(gov + "\n")
        (d / "scaling_cur_freq").write_text("2400000\n")
    zone = sys_ / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("51350\n")
    (zone / "type").write_text("cpu-thermal\n")
    monkeypatch.setattr(sysinfo, "PROC", proc)
    monkeypatch.setattr(sysinfo, "SYS", sys_)
    facts = sysinfo.collect()
    assert facts["cpu_model"] == "4x Cortex-A76"
    assert facts["board"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert facts["mem_total_mb"] == pytest.approx(8245104 / 1024)
    assert facts["cpufreq_governor"] == {"cpu0": "ondemand", "cpu1": "performance"}
    assert facts["cpufreq_cur_mhz"] == {"cpu0": 2400.0, "cpu1": 2400.0}
    assert facts["thermal_c"] == {"thermal_zone0:cpu-thermal": 51.35}
    assert not {"cpu_model", "board", "cpufreq_governor", "thermal_c"} & set(facts["unavailable"])


def test_sysinfo_says_why_when_sys_is_empty(monkeypatch, tmp_path):
    monkeypatch.setattr(sysinfo, "PROC", tmp_path / "proc")
    monkeypatch.setattr(sysinfo, "SYS", tmp_path / "sys")
    facts = sysinfo.collect()
    assert facts["cpufreq_governor"] is None and "scaling_governor" in facts["unavailable"]["cpufreq_governor"]
    assert facts["thermal_c"] is None and "thermal_zone" in facts["unavailable"]["thermal_c"]


# ---------------------------------------------------------------- accuracy and agreement

def test_agreement_on_known_vectors():
    got = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    ref = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    a = agreement(got, ref)
    top1 = evaluate.score("classification", {"y": got}, {"labels": np.zeros(3, int)}, {"y": ref})["top1_agreement"]
    assert top1 == pytest.approx(2 / 3)  # row 1 argmax differs; zero rows agree on class 0
    assert a["max_abs_error"] == 2.0 and a["mean_abs_error"] == pytest.approx(4 / 6)
    assert a["cosine_min"] == 0.0 and a["cosine_mean"] == pytest.approx((1 + 0 + 1) / 3)
    assert a["nonfinite_outputs"] == 0


def test_nan_outputs_are_counted_and_written_as_null():
    a = agreement(np.array([[np.nan, 1.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert a["nonfinite_outputs"] == 1 and math.isnan(a["max_abs_error"])
    text = RunReport(OK, {"path": "b"}, metrics=a).to_json()
    assert json.loads(text)["metrics"]["max_abs_error"] is None and "NaN" not in text


def test_score_classification_against_labels_and_reference():
    outputs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    m = evaluate.score("classification", {"logits": outputs}, {"labels": np.array([0, 1, 1, 0])},
                       {"logits": reference})
    assert m["accuracy"] == 0.5 and m["reference_accuracy"] == 0.75 and m["top1_agreement"] == 0.75
    assert m["metric"] == "accuracy" and m["n_samples"] == 4
    other = evaluate.score("speech-recognition", {"logits": outputs}, {}, None)  # a task this runner lacks
    assert other["metric"] is None and "no metric for task" in other["metric_unavailable"]


# ---------------------------------------------------------------- ONNX Runtime providers

@pytest.fixture
def tiny_onnx(tmp_path):
    """y = relu(x @ W): a real ONNX file, made with onnx.helper."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) - 5, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_ort_chain():
    assert runtimes.ort_provider_chain("TensorrtExecutionProvider") == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert runtimes.ort_provider_chain("QNNExecutionProvider") == ["QNNExecutionProvider", "CPUExecutionProvider"]
    assert runtimes.ort_provider_chain(None) == runtimes.ort_provider_chain("CPUExecutionProvider") == [
        "CPUExecutionProvider"]


@pytest.fixture
def without_qnn(monkeypatch):
    """A host without the QNN EP: the `qnn` extra's module hidden, and its plugin library unregistered where an
    earlier test in this process registered it (registration is process-wide)."""
    import onnxruntime as ort

    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)
    if "QNNExecutionProvider" in {d.ep_name for d in ort.get_ep_devices()}:
        ort.unregister_execution_provider_library("QNNExecutionProvider")


@pytest.mark.parametrize("target", ["QNNExecutionProvider", "TensorrtExecutionProvider", "CoreMLExecutionProvider"])
def test_missing_ep_falls_back_to_cpu_loudly(tiny_onnx, target, without_qnn):
    import onnxruntime as ort

    if target in ort.get_available_providers():
        pytest.skip(f"hardware: this onnxruntime has {target}, so there is nothing to fall back from")
    model = runtimes.load(tiny_onnx, "onnxruntime", threads=1, target=target)
    info = model.info
    assert info["provider"] == "CPUExecutionProvider" and info["providers"] == ["CPUExecutionProvider"]
    assert info["fallback"].startswith(f"ran on CPUExecutionProvider instead of {target}: ")
    assert f"{target} is not available in this onnxruntime build" in info["fallback"]
    assert info["nodes_per_provider"] == {"CPUExecutionProvider": 2}
    x = np.array([[1, 2, 3, 4]], np.float32)
    expected = np.maximum(x @ (np.arange(12, dtype=np.float32).reshape(4, 3) - 5), 0)
    np.testing.assert_allclose(model.run([x])[0], expected)
    model.bound([x])()  # the timed call runs too


def test_cpu_target_is_no_fallback(tiny_onnx):
    info = runtimes.load(tiny_onnx, "onnxruntime", target="CPUExecutionProvider").info
    assert info["fallback"] is None and info["provider"] == "CPUExecutionProvider"


def test_ep_that_fails_to_start_falls_back_with_its_error(tiny_onnx, monkeypatch):
    """An EP the build has but the device cannot start (CUDA without its libraries): ORT's own error is kept."""
    import onnxruntime as ort

    real_session, real_available = ort.InferenceSession, ort.get_available_providers()

    def session(path, sess_options=None, providers=None, **kw):
        if providers[0] == "CUDAExecutionProvider":
            raise RuntimeError("libcudart.so.12: cannot open shared object file\nmore detail")
        return real_session(path, sess_options=sess_options, providers=providers, **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real_available, "CUDAExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    info = runtimes.load(tiny_onnx, "onnxruntime", target="TensorrtExecutionProvider").info
    assert info["provider"] == "CPUExecutionProvider"
    assert "TensorrtExecutionProvider is not available" in info["fallback"]
    assert "CUDAExecutionProvider failed to start: libcudart.so.12: cannot open shared object file" in info["fallback"]
    assert "more detail" not in info["fallback"]


def test_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        runtimes.load("m.bin", "tvm")


# ---------------------------------------------------------------- report

def test_report_v2_round_trip_and_version_check():
    r = RunReport(MODEL_ERROR, {"path": "b", "profile": "pixel8"}, metrics={"accuracy": 0.5},
                  memory={"baseline_rss_mb": 30.5, "unavailable": {}}, timing={"load_ms": 2.0},
                  fallback="ran on CPU instead of QNN", error="InvalidGraph: bad")
    data = json.loads(r.to_json())
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert RunReport.from_dict(data) == r and r.exit_code == 3
    assert set(data) == {"schema_version", "run_id", "created_at", "status", "bundle", "runtime", "metrics",
                         "latency_ms", "error", "device", "memory", "timing", "fallback"}
    with pytest.raises(ValueError, match="schema_version 1 is not supported"):
        RunReport.from_dict({**data, "schema_version": 1})


def test_fields_document_every_top_level_key():
    top = {k for k in FIELDS if "." not in k}
    assert top == {f.name for f in dataclasses.fields(RunReport)}
    for key in FIELDS:
        if "." in key:
            assert key.split(".", 1)[0] in top, key


# ---------------------------------------------------------------- the CLI on a small hand-made bundle

@pytest.fixture
def tiny_bundle(tiny_onnx):
    """A bundle around tiny.onnx, built for QNN (absent here): manifest with sha256s, eval set, references."""
    bundle = tiny_onnx.parent / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    x = np.random.default_rng(1).standard_normal((12, 4)).astype(np.float32)
    reference = np.maximum(x @ (np.arange(12, dtype=np.float32).reshape(4, 3) - 5), 0)
    labels = np.array([0, 1, 2] * 4)
    np.savez(bundle / "eval.npz", inputs=x, labels=labels, reference=reference)
    m = manifest(model={"file": "model.onnx", "runtime": "onnxruntime", "runtime_target": "QNNExecutionProvider",
                        "format": "onnx", "backend": "qnn", "precision": "fp32", "bytes": 0,
                        "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
                        "outputs": [{"name": "y", "shape": [1, 3], "dtype": "float32"}]},
                 profile={"id": "galaxy-s24", "name": "Samsung Galaxy S24"})
    (bundle / "manifest.json").write_text(json.dumps(list_files(m, bundle)))
    return bundle, float((reference.argmax(1) == labels).mean())


QUICK = ["--runs", "5", "--min-seconds", "0", "--warmup-seconds", "0"]


def test_cli_report_fallback_warning_and_out_file(tiny_bundle, tmp_path, capsys, without_qnn):
    bundle, accuracy = tiny_bundle
    out = tmp_path / "report.json"
    assert main([str(bundle), *QUICK, "--threads", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert json.loads(out.read_text()) == report and report["status"] == OK
    assert report["bundle"] == {"path": str(bundle), "profile": "galaxy-s24", "format": "onnx", "backend": "qnn",
                                "precision": "fp32",
                                "model_sha256": hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()}
    assert "QNNExecutionProvider is not available" in report["fallback"]
    assert f"edgekit_runner: WARNING: fallback: {report['fallback']}" in captured.err
    assert report["metrics"]["accuracy"] == accuracy == report["metrics"]["reference_accuracy"]
    assert report["metrics"]["top1_agreement"] == 1.0 and report["metrics"]["max_abs_error"] < 1e-5
    assert report["latency_ms"]["n"] == report["timing"]["timed_runs"] >= 5
    assert report["memory"]["model_file_bytes"] == (bundle / "model.onnx").stat().st_size


def test_cli_out_in_a_missing_folder_still_prints_the_report(tiny_bundle, tmp_path, capsys):
    bundle, _ = tiny_bundle
    assert main([str(bundle), *QUICK, "--no-accuracy", "--out", str(tmp_path / "no" / "r.json")]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == OK
    assert "cannot write the report to" in captured.err and not (tmp_path / "no").exists()


def test_eval_set_without_labels_is_an_infra_error(tiny_bundle, capsys):
    bundle, _ = tiny_bundle
    np.savez(bundle / "eval.npz", inputs=np.zeros((12, 4), np.float32))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["eval.npz"]["sha256"] = hashlib.sha256((bundle / "eval.npz").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(bundle), *QUICK]) == 2
    assert "has no labels array" in json.loads(capsys.readouterr().out)["error"]


def test_manifest_naming_a_file_outside_the_bundle_is_refused(tiny_bundle, capsys):
    bundle, _ = tiny_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model"]["file"] = "../tiny.onnx"  # exists, but is not the bundle's
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(bundle), *QUICK]) == 2
    assert 'model.file is "../tiny.onnx"; expected a relative path inside the bundle' in \
        json.loads(capsys.readouterr().out)["error"]


def test_time_model_runs_exactly_the_requested_counts():
    """The host validator's quick timing: exactly ``runs`` timed runs after ``warmup``, whatever the duration."""
    calls = []
    model = LoadedModel(lambda arrays: calls.append(arrays[0].shape) or [arrays[0]],
                        [TensorInfo("x", [2, 3], "float32")], [TensorInfo("y", [2, 3], "float32")])
    stats = evaluate.time_model(model, np.zeros((2, 3), np.float32), runs=7, warmup=2)
    assert len(calls) == 1 + 2 + 7 and stats["n"] == 7  # first inference, warm-up, timed
    assert stats["batch"] == 2 and stats["warmup"] == 2 and stats["median"] == stats["p50"] > 0


def test_litert_tensors_follow_the_argument_order_past_ten():
    """TFLite keeps a signature's tensors in a map sorted by name (args_10 before args_2); the adapter puts
    them back in the exported function's order."""
    names = [f"args_{i}" for i in range(12)]

    class Interp:
        def _get_full_signature_list(self):
            return {"serving_default": {"inputs": {n: 100 + i for i, n in enumerate(sorted(names))}, "outputs": {}}}

    details = [{"index": 100 + i, "name": f"serving_default_{n}:0"} for i, n in enumerate(sorted(names))]
    ordered = runtimes._in_signature_order(Interp(), details, "inputs")
    assert [d["name"] for d in ordered] == [f"serving_default_{n}:0" for n in names]

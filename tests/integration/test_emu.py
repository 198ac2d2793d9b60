"""The emulated arm64 target: real bundles on a Debian arm64 root under QEMU (edgekit.emu), against x86-64.

One arm64 run per runtime (ONNX Runtime, LiteRT, ExecuTorch) with the tiny digits bundles the other tests
build, each compared image for image with the same bundle run here on x86-64; then the refusals. The root
and the venvs are built once (``edgekit emu setup``'s code) and kept in the edgekit cache, like the
tiny-LM weights: CI builds them once per run (about 10 minutes, most of it debootstrap's second stage
under emulation).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit import emu
from edgekit.bundle import MANIFEST
from edgekit.cli import cli
from edgekit.fsutil import cache_dir
from edgekit.transport import run_bundle

EMU_HOME = cache_dir() / "emu"


@pytest.fixture(scope="session")
def emu_root() -> Path:
    """The cached root with the three runtimes' venvs, built on first use (timed: the note reports it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEKIT_EMU_HOME", str(EMU_HOME))
        tools = emu.find_tools()
        t0 = time.monotonic()
        folder = emu.ensure_root(tools, print)
        for runtime in emu.RUNTIME_PACKAGES:
            emu.ensure_venv(folder, tools, runtime, step=print)
        print(f"emu root and venvs ready in {time.monotonic() - t0:.1f} s")
    return folder


@pytest.fixture
def emu_env(emu_root, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_EMU_HOME", str(EMU_HOME))
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    return emu_root


def _bench(bundle: Path, target: str, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["bench", str(bundle), "--on", target, "--json", "--runs", "3", "--warmup", "1",
                                      "--timeout", "1200", *extra])
    assert result.stdout.lstrip().startswith("{"), result.output  # progress goes to stderr
    return result.exit_code, json.loads(result.stdout)


def _compare(bundle: Path, outcome: dict) -> tuple[dict, dict]:
    """The arm64 metrics and the same bundle's on x86-64 (this host, same runner, same runtime release)."""
    local = run_bundle(bundle, "local", runs=3, warmup=1)
    assert local.status == "OK", local.error
    return outcome["report"]["metrics"], local.report["metrics"]


def _assert_arm64_run(outcome: dict, profile: str, cpu: str) -> dict:
    report = outcome["report"]
    assert outcome["status"] == "OK", outcome.get("error")
    assert outcome["target"] == f"emu:{profile}" + ("" if cpu == _profile_cpu(profile) else f"?cpu={cpu}")
    assert report["device"]["arch"] == "aarch64"  # the runner itself saw an arm64 machine
    em = report["device"]["emulation"]
    assert em["emulated"] is True and em["timings_representative"] is False
    assert em["qemu_cpu"] == cpu and em["emulator"].startswith("qemu-aarch64")
    assert tuple(int(x) for x in em["emulator"].split()[-1].split(".")[:2]) >= emu.MIN_QEMU
    assert em["missing_features"] == []  # the emulated CPU has every ISA feature the profile lists
    # neither speed nor memory is judged under emulation (QEMU's own memory is in the process); size is
    judged = {c["key"]: c for c in outcome["budgets"]}
    assert judged["latency_p90_ms"]["status"] == "not measured" and "emulation" in judged["latency_p90_ms"]["where"]
    assert judged["peak_memory_mb"]["status"] == "not measured" and "QEMU's own" in judged["peak_memory_mb"]["where"]
    assert judged["model_mb"]["status"] == "pass"
    assert outcome["report"]["memory"]["peak_rss_run_mb"] > 0  # measured and stored all the same
    return em


def _profile_cpu(profile: str) -> str:
    from edgekit.profiles import load_profile

    return load_profile(profile).cpu_isa.qemu_cpu


def test_onnx_fp32_on_emulated_cortex_a78_matches_x86(built, emu_env):
    bundle = built("jetson-orin-nano")
    rc, outcome = _bench(bundle, "emu:jetson-orin-nano")
    assert rc == 0, outcome
    _assert_arm64_run(outcome, "jetson-orin-nano", "cortex-a76")
    arm, x86 = _compare(bundle, outcome)
    assert outcome["report"]["runtime"]["provider"] == "CPUExecutionProvider"
    assert arm["n_samples"] == x86["n_samples"] > 100
    assert arm["accuracy"] == x86["accuracy"] and arm["top1_agreement"] == x86["top1_agreement"] == 1.0
    assert arm["max_abs_error"] < 1e-4  # fp32 on NEON vs AVX2: summation order only


def test_tflite_int8_on_emulated_cortex_a76_and_a_budget_it_misses(built, emu_env):
    """XNNPACK's arm64 int8 kernels on the Pi 5's core agree with x86-64's; a budget it misses exits 10."""
    bundle = built("raspberry-pi-5", "--quant", "int8")
    rc, outcome = _bench(bundle, "emu:raspberry-pi-5", "--budget", "accuracy_drop=0")
    em = _assert_arm64_run(outcome, "raspberry-pi-5", "cortex-a76")
    assert "asimddp" in em["cpu_features"] and "sve" not in em["cpu_features"]
    arm, x86 = _compare(bundle, outcome)
    assert outcome["report"]["runtime"]["delegate"].lower().startswith("xnnpack")
    assert abs(arm["accuracy"] - x86["accuracy"]) * arm["n_samples"] <= 1  # at most one image apart
    drop = next(c for c in outcome["budgets"] if c["key"] == "accuracy_drop")
    validation = json.loads((bundle / MANIFEST).read_text())["validation"]
    reference = (validation.get("cpu") or validation)["reference_value"]
    assert drop["measured"] == pytest.approx((reference - arm["accuracy"]) * 100)
    if drop["measured"] > 0:  # int8 lost something against fp32: the zero budget is missed, on arm64
        assert rc == 10 and drop["status"] == "fail" and "emulation" in drop["where"]
    else:
        assert rc == 0


def test_executorch_int8_on_the_pixel8_cpu_and_on_qemu_max(built, emu_env):
    """The XNNPACK int8 .pte on the Tensor G3's ISA (neoverse-n2: i8mm, SVE2, no SME), then on QEMU's
    `max` (SME too): QEMU >= 10 gets both right, as the device's kernels must."""
    bundle = built("pixel8", "--quant", "int8")
    x86 = None
    for target, cpu in (("emu:pixel8", "neoverse-n2"), ("emu:pixel8?cpu=max", "max")):
        rc, outcome = _bench(bundle, target)
        assert rc == 0, outcome
        em = _assert_arm64_run(outcome, "pixel8", cpu)
        assert ("sme" in em["extra_features"]) == (cpu == "max")
        assert outcome["report"]["runtime"].get("fallback") is None
        if x86 is None:
            arm, x86 = _compare(bundle, outcome)
        arm = outcome["report"]["metrics"]
        assert abs(arm["accuracy"] - x86["accuracy"]) * arm["n_samples"] <= 1, (cpu, arm, x86)
        assert arm["top1_agreement"] >= x86["top1_agreement"] - 1 / arm["n_samples"]


def test_a_second_setup_reuses_the_cached_root_and_venvs(emu_env):
    tools = emu.find_tools()
    t0 = time.monotonic()
    assert emu.ensure_root(tools) == emu_env
    python = emu.ensure_venv(emu_env, tools, "onnxruntime")
    assert time.monotonic() - t0 < 5  # nothing rebuilt (the first build takes minutes)
    assert (emu_env / "root" / python.lstrip("/")).exists()


def test_a_runtime_without_an_aarch64_wheel_is_refused_naming_the_version(emu_env):
    with pytest.raises(emu.EmuError, match=r"onnxruntime==1\.0\.0"):
        emu.ensure_venv(emu_env, emu.find_tools(), "onnxruntime", "1.0.0")
    assert not list((emu_env / "root/opt/edgekit/venvs").glob("onnxruntime-1.0.0*"))


def test_a_corrupt_cached_root_is_detected_and_rebuilt(tmp_path, monkeypatch):
    """A root missing a file (or its stamp) is rebuilt; here debootstrap is not on PATH, so the rebuild
    stops with the package to install, after saying why the cached root was refused."""
    monkeypatch.setenv("EDGEKIT_EMU_HOME", str(tmp_path))
    folder = emu.root_dir()
    (folder / "root/usr/bin").mkdir(parents=True)
    assert emu.root_problems(folder) == [f"{emu.ROOT_STAMP} is missing or unreadable (a build that did not "
                                         "finish?)"]
    (folder / emu.ROOT_STAMP).write_text(json.dumps({"suite": emu.SUITE, "packages": list(emu.PACKAGES),
                                                     "python": "3.11"}))
    assert "usr/bin/python3 is missing" in emu.root_problems(folder)
    tools = emu.find_tools()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    steps: list[str] = []
    with pytest.raises(emu.EmuError, match="debootstrap is not installed .*apt-get install debootstrap"):
        emu.ensure_root(tools, steps.append)
    assert steps and "unusable: etc/debian_version is missing" in steps[0]


def _fake(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n{body}\n")
    (folder / name).chmod(0o755)


@pytest.mark.parametrize("tools, target, message", [
    ([], "emu:raspberry-pi-5", "QEMU user-mode emulation is not installed .*qemu-user-static"),
    (["qemu10"], "emu:raspberry-pi-5", "proot is not installed"),
    (["qemu7", "proot"], "emu:pixel8?cpu=max", "older than 10.0, whose SME emulation is wrong .*24.4%"),
    (["qemu10", "proot"], "emu:host-cpu", "host-cpu is linux/x86_64; emu: emulates arm64 .*--on local"),
    (["qemu10", "proot"], "emu:iphone-15-pro", "iphone-15-pro is ios/arm64"),
    (["qemu10", "proot"], "emu:no-such-device", "no-such-device"),
])
def test_what_is_missing_is_named_before_anything_runs(built, tmp_path, monkeypatch, tools, target, message):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    versions = {"qemu10": "10.0.2", "qemu7": "7.2.19"}
    for tool in tools:
        if tool in versions:
            _fake(bin_dir, "qemu-aarch64-static", f"echo 'qemu-aarch64 version {versions[tool]} (Debian)'")
        else:
            _fake(bin_dir, tool, "exit 99")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.path.dirname(sys.executable)}")
    monkeypatch.setenv("EDGEKIT_EMU_HOME", str(tmp_path / "emu"))
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["bench", str(built("jetson-orin-nano")), "--on", target])
    assert result.exit_code in (2, 8), result.output
    assert __import__("re").search(message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "emu").exists() or not any((tmp_path / "emu").iterdir())  # nothing was built


def test_setup_command_reports_the_cached_root(emu_env):
    result = CliRunner().invoke(cli, ["emu", "setup", "--runtime", "litert"])
    assert result.exit_code == 0, result.output
    assert f"arm64 root: {emu_env}" in result.output and "litert: /opt/edgekit/venvs/ai-edge-litert-2.3.0_" in result.output
    bad = CliRunner().invoke(cli, ["emu", "setup", "--runtime", "tensorflow"])
    assert bad.exit_code == 2 and "not one of onnxruntime, litert, executorch" in bad.output
    assert shutil.which("proot")


def _build_validated_on_emu(root: Path, out: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["build", "--device", "raspberry-pi-5", "--project", str(root), "--quant", "int8",
                                      "--no-distill", "--validate-on", "emu", "--out", str(out)])
    return result.exit_code, result.output


def test_build_validates_on_arm64_and_records_it_beside_the_host(root, emu_env, tmp_path):
    rc, output = _build_validated_on_emu(root, tmp_path / "b")
    assert rc == 0, output
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    a = manifest["validation"]["arm64"]
    assert (a["where"], a["qemu_cpu"], a["metric"], a["missing_features"]) == (
        "arm64-emulation", "cortex-a76", "accuracy", [])
    assert abs(a["value"] - manifest["validation"]["value"]) * a["metrics"]["n_samples"] <= 1
    assert a["host_value"] == manifest["validation"]["value"] and a["runtime"]["runtime"] == "ai-edge-litert"
    assert "arm64" in manifest["timings_s"]
    assert f"validated on arm64: {a['emulator']} -cpu cortex-a76: accuracy {a['value']:.2%}" in " ".join(output.split())


def test_a_bundle_wrong_on_arm64_fails_the_emulated_validation(root, emu_env, tmp_path, monkeypatch):
    """The arm64 run is real; its accuracy is then replaced by what QEMU 7.2's SME emulation produced
    (24.4%), the failure this stage exists to catch: the build stops and writes nothing."""
    from edgekit import transport

    real = transport.run_bundle

    def wrong_on_arm64(*args, **kwargs):
        outcome = real(*args, **kwargs)
        outcome.report["metrics"]["accuracy"] = 0.244
        return outcome

    monkeypatch.setattr(transport, "run_bundle", wrong_on_arm64)
    rc, output = _build_validated_on_emu(root, tmp_path / "b")
    assert rc == 5, output
    flat = " ".join(output.split())
    assert "on arm64 (qemu-aarch64-static" in flat and "-cpu cortex-a76) the bundle's accuracy is 24.40%" in flat
    assert "74.77 points below the fp32 reference 99.17%; the profile allows 1 (on this host: 98.89%); the bundle " \
           "was not written" in flat
    assert not (tmp_path / "b").exists()


def test_a_language_model_with_its_kv_cache_on_arm64(lm_built, emu_env):
    """The tiny decoder's ONNX bundle (explicit past/present KV cache) on the Pixel 8's ISA: perplexity and
    greedy continuation as on x86-64; decode speed not judged."""
    bundle = lm_built("onnx")
    rc, outcome = _bench(bundle, "emu:pixel8")
    assert rc == 0, outcome
    _assert_arm64_run_lm(outcome)
    arm, x86 = _compare(bundle, outcome)
    assert arm["eval_tokens"] == x86["eval_tokens"] > 0
    assert arm["perplexity"] == pytest.approx(x86["perplexity"], rel=1e-4)
    assert arm["greedy_tokens"] == x86["greedy_tokens"] and arm["greedy_agreement"] == x86["greedy_agreement"]


def _assert_arm64_run_lm(outcome: dict) -> None:
    report = outcome["report"]
    assert outcome["status"] == "OK" and report["device"]["arch"] == "aarch64"
    assert report["device"]["emulation"]["qemu_cpu"] == "neoverse-n2"
    judged = {c["key"]: c for c in outcome["budgets"]}
    for key in ("decode_tokens_per_s", "time_to_first_token_ms", "peak_memory_mb"):
        assert judged[key]["status"] == "not measured" and "emulation" in judged[key]["where"], judged[key]
    assert report["metrics"]["decode_tokens_per_s"] > 0  # measured and stored, not judged


def test_without_root_the_root_is_not_built_and_the_message_says_how(tmp_path, monkeypatch):
    """Checked for real as an unprivileged user (see the README); here the same path with geteuid() != 0."""
    monkeypatch.setenv("EDGEKIT_EMU_HOME", str(tmp_path / "emu"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(emu.EmuError, match=r"needs root once .*sudo -E edgekit emu setup"):
        emu.ensure_root(emu.find_tools())
    assert not (tmp_path / "emu" / emu.ROOT_NAME).exists()

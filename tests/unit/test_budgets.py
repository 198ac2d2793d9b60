"""Device budgets (edgekit.budgets): limits from the profile and --budget, checked only against measured numbers."""

from __future__ import annotations

import pytest

from edgekit.budgets import BudgetMissed, check, for_bench, from_manifest, parse_overrides, raise_if_missed, resolve
from edgekit.errors import PlanError
from edgekit.plan import make_plan
from edgekit.profiles import load_profile


def test_overrides_are_numbers_for_known_keys():
    assert parse_overrides(["latency_p90_ms=0.001", "decode-tokens-per-s=12", "accuracy_drop=0"]) == {
        "latency_p90_ms": 0.001, "decode_tokens_per_s": 12.0, "accuracy_drop": 0.0}
    for bad, words in (("latency=3", "KEY one of model_mb"), ("model_mb", "KEY one of"), ("model_mb=big", "finite"),
                       ("model_mb=nan", "finite"), ("model_mb=-1", "finite"), ("model_mb=0", "> 0"),
                       ("peak_memory_mb=inf", "finite")):
        with pytest.raises(PlanError, match=words):
            parse_overrides([bad])


def test_the_plan_carries_the_profiles_budgets_with_overrides():
    pixel8 = load_profile("pixel8")
    limits = resolve(pixel8)
    assert limits == {"model_mb": 50, "peak_memory_mb": 512, "latency_p90_ms": 20, "accuracy_drop": 1.0,
                      "decode_tokens_per_s": 10, "time_to_first_token_ms": 1000}
    plan = make_plan(pixel8, quant="int8", budget={"latency_p90_ms": 5.0})
    assert plan.budgets == limits | {"latency_p90_ms": 5.0}
    assert "latency_p90_ms <= 5 ms" in plan.describe_budgets() and "decode" not in plan.describe_budgets()
    assert make_plan(pixel8, quant="int8", max_accuracy_drop=0.5).budgets["accuracy_drop"] == 0.5
    assert make_plan(pixel8, quant="int8", max_accuracy_drop=0.5).max_accuracy_drop == 0.5
    with pytest.raises(PlanError, match="give the accuracy budget once"):
        make_plan(pixel8, quant="int8", max_accuracy_drop=0.5, budget={"accuracy_drop": 2.0})


def test_a_check_passes_fails_or_was_not_measured_never_passes_unmeasured():
    limits = {"model_mb": 50, "latency_p90_ms": 20, "decode_tokens_per_s": 10, "peak_memory_mb": 512}
    got = {c.key: c for c in check(limits, {"model_mb": (51.0, "the artifact"), "latency_p90_ms": (20.0, "local"),
                                             "peak_memory_mb": (float("nan"), "local")}, "classification")}
    assert set(got) == {"model_mb", "latency_p90_ms", "peak_memory_mb"}  # tokens/s is for language models
    assert got["model_mb"].status == "fail" and got["model_mb"].excess == pytest.approx(1.0)
    assert got["model_mb"].describe() == ("model_mb 51 MB misses the limit <= 50 MB by 1 MB (1.02x), measured on "
                                          "the artifact")
    assert got["latency_p90_ms"].status == "pass"  # at the limit is within it
    assert got["peak_memory_mb"].status == "not measured" and got["peak_memory_mb"].measured is None
    slow = check(limits, {"decode_tokens_per_s": (4.0, "ssh://pi@board")}, "language-model")
    tps = next(c for c in slow if c.key == "decode_tokens_per_s")
    assert tps.status == "fail" and tps.excess == pytest.approx(6.0) and ">= 10 tokens/s by 6 tokens/s" in tps.describe()
    with pytest.raises(BudgetMissed, match="misses 1 budget: decode_tokens_per_s 4 tokens/s") as e:
        raise_if_missed(slow, "it")
    assert e.value.exit_code == 10
    raise_if_missed(slow, "it", fail=False)


def test_a_bench_report_is_checked_against_the_budgets_recorded_in_the_bundle():
    manifest = {"task": {"kind": "language-model"}, "model": {"bytes": 3_000_000, "precision": "int4-weight"},
                "profile": {"budgets": {"max_model_mb": 50, "max_peak_memory_mb": 512, "p90_latency_ms": 20,
                                        "max_accuracy_drop": 1.0}}}  # a bundle built before the LM budgets
    assert from_manifest(manifest) == {"model_mb": 50, "peak_memory_mb": 512, "latency_p90_ms": 20,
                                       "accuracy_drop": 1.0}
    report = {"latency_ms": {"p90": 9.0}, "memory": {"peak_rss_load_mb": 80.0, "peak_rss_run_mb": 95.5},
              "metrics": {"decode_tokens_per_s": 42.0, "time_to_first_token_ms": 30.0}}
    checks = {c.key: c for c in for_bench(from_manifest(manifest, {"decode_tokens_per_s": 50}), manifest, report,
                                          "local")}
    assert set(checks) == {"model_mb", "peak_memory_mb", "decode_tokens_per_s"}
    assert checks["peak_memory_mb"].measured == 95.5 and checks["decode_tokens_per_s"].status == "fail"
    classifier = {"task": {"kind": "classification"}, "model": {"bytes": 80_000, "precision": "int8"},
                  "validation": {"metric": "accuracy", "reference_value": 0.99},
                  "profile": manifest["profile"]}
    drop = next(c for c in for_bench(from_manifest(classifier), classifier,
                                     {"metrics": {"accuracy": 0.975}, "latency_ms": {"p90": 1.0}}, "adb")
                if c.key == "accuracy_drop")
    assert drop.measured == pytest.approx(1.5) and drop.status == "fail" and drop.where == "adb"


def test_a_run_on_the_htp_emulator_measures_accuracy_but_not_the_phones_speed_or_memory():
    manifest = {"task": {"kind": "classification"}, "model": {"bytes": 80_000, "precision": "int8"},
                "profile": {"budgets": {"max_model_mb": 50, "max_peak_memory_mb": 512, "p90_latency_ms": 15,
                                        "max_accuracy_drop": 1.0}},
                # the emulator's validation ran 120 of the eval samples; the CPU EP's all of them
                "validation": {"metric": "accuracy", "reference_value": 1.0, "cpu": {"reference_value": 0.99}}}
    report = {"latency_ms": {"p90": 700.0}, "memory": {"peak_rss_run_mb": 900.0}, "metrics": {"accuracy": 0.985},
              "runtime": {"qnn": {"where": "htp-emulator"}}}
    checks = {c.key: c for c in for_bench(from_manifest(manifest), manifest, report, "local")}
    for key in ("latency_p90_ms", "peak_memory_mb"):
        assert checks[key].status == "not measured" and "HTP emulator" in checks[key].where
    assert checks["accuracy_drop"].measured == pytest.approx(0.5) and checks["accuracy_drop"].status == "pass"

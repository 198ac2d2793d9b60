from __future__ import annotations

import pytest

from edgekit.errors import PlanError
from edgekit.plan import make_plan
from edgekit.profiles import load_profile


def test_default_plan_pixel8():
    plan = make_plan(load_profile("pixel8"))
    assert (plan.format, plan.backend, plan.runtime) == ("executorch", "xnnpack", "executorch")
    assert plan.validation == "target-runtime" and plan.atol == 1e-4
    assert plan.profile_default_quant == "int8" and plan.quant == "none"


def test_host_twin_for_backends_that_cannot_run_here():
    assert make_plan(load_profile("iphone-15-pro")).validation == "host-twin"
    assert make_plan(load_profile("galaxy-s24")).validation == "host-twin"
    assert make_plan(load_profile("pixel8"), backend="vulkan").validation == "host-twin"


def test_format_override_picks_a_backend_of_the_profile():
    plan = make_plan(load_profile("pixel8"), fmt="tflite")
    assert (plan.format, plan.backend) == ("tflite", "xnnpack")
    plan = make_plan(load_profile("jetson-orin-nano"), fmt="onnx")
    assert plan.backend == "tensorrt"


def test_format_override_takes_the_first_path_that_builds_the_precision():
    """galaxy-s24 lists its NPU first: --format tflite is LiteRT's Qualcomm NPU for int8 (compiled ahead of time,
    a compile stage), its CPU (XNNPACK) for what the NPU path does not build."""
    s24 = load_profile("galaxy-s24")
    npu = make_plan(s24, fmt="tflite", quant="int8")
    assert (npu.backend, npu.qnn["chip"], npu.stages[-2:]) == ("qnn", "SM8650", ("compile", "bundle"))
    for quant in ("none", "int8-weight-only"):
        plan = make_plan(s24, fmt="tflite", quant=quant)
        assert (plan.backend, plan.qnn) == ("xnnpack", None) and "compile" not in plan.stages
    with pytest.raises(PlanError, match="fp32 is not available for tflite/qnn on galaxy-s24"):
        make_plan(s24, fmt="tflite", backend="qnn", quant="none")


def test_impossible_combination_names_what_works():
    with pytest.raises(PlanError) as e:
        make_plan(load_profile("jetson-orin-nano"), fmt="executorch", backend="coreml")
    msg = str(e.value)
    assert "executorch/coreml is not available on jetson-orin-nano" in msg
    assert "onnx/tensorrt (gpu)" in msg and "executorch/xnnpack (cpu)" in msg


def test_format_not_on_device():
    with pytest.raises(PlanError, match="format 'tflite' is not available on iphone-15-pro"):
        make_plan(load_profile("iphone-15-pro"), fmt="tflite")


def test_plan_round_trips_through_dict():
    plan = make_plan(load_profile("raspberry-pi-5"))
    assert type(plan).model_validate(plan.model_dump()) == plan


def test_every_stage_a_plan_lists_is_a_stage_the_pipeline_runs():
    """The plan's stage list is what the build runs, stage by stage: each name must be a pipeline stage."""
    from edgekit.pipeline import STAGES
    from edgekit.plan import QUANT_CHOICES
    from edgekit.profiles import ProfileRegistry

    seen = set()
    for profile_id in ProfileRegistry().names():
        for quant in QUANT_CHOICES:
            for distill, validate_on, prune in ((False, "host", None), (True, "host", None), (False, "emu", None),
                                                (True, "host", "structured:0.5")):
                try:
                    plan = make_plan(load_profile(profile_id), quant=quant, distill=distill, validate_on=validate_on,
                                     prune=prune)
                except PlanError:
                    continue
                assert set(plan.stages) <= set(STAGES), (profile_id, quant, plan.stages)
                assert plan.stages[0] == "load" and plan.stages[-1] == {"host": "bundle", "emu": "arm64"}[validate_on]
                seen.update(plan.stages)
    assert seen == set(STAGES)  # and every pipeline stage is reachable from some plan

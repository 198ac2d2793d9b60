from __future__ import annotations

import json

import pytest

from edgekit.errors import PlanError
from edgekit.plan import make_plan
from edgekit.profiles import ProfileRegistry, load_profile
from edgekit.quantize.schemes import SCHEMES, Int8Static, scheme_from_dict


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_scheme_round_trips(name):
    scheme = SCHEMES[name](calib_samples=7)
    assert scheme_from_dict(scheme.to_dict()) == scheme
    assert scheme.to_dict()["scheme"] == name


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        scheme_from_dict({"scheme": "int3"})


def test_every_profile_plan_round_trips_with_and_without_int8(isolated_env):
    for profile in ProfileRegistry().load_all():
        for quant in ("none", "int8"):
            try:
                plan = make_plan(profile, quant=quant)
            except PlanError:
                assert quant == "int8" and profile.id == "iphone-15-pro"  # Core ML: weight-only int8 or fp16
                continue
            assert type(plan).model_validate(plan.model_dump()) == plan
            if quant == "int8":
                assert scheme_from_dict(plan.quant_scheme) == Int8Static()
                assert plan.atol is None and plan.max_accuracy_drop == profile.budgets.max_accuracy_drop


def test_int8_where_the_backend_cannot_names_alternatives():
    with pytest.raises(PlanError) as e:
        make_plan(load_profile("iphone-15-pro"), quant="int8")
    assert "--quant int8 is not available for executorch/coreml on iphone-15-pro" in str(e.value)
    assert str(e.value).endswith("it works with: executorch/xnnpack")
    with pytest.raises(PlanError, match="it works with: executorch/xnnpack, tflite/xnnpack, onnx/cpu"):
        make_plan(load_profile("pixel8"), backend="vulkan", quant="int8")


def test_qat_only_where_a_pt2e_quantizer_trains():
    assert make_plan(load_profile("pixel8"), quant="int8-qat", qat_epochs=5).quant_scheme["epochs"] == 5
    assert make_plan(load_profile("raspberry-pi-5"), quant="int8-qat").stages[3] == "qat"
    with pytest.raises(PlanError, match="--quant int8-qat is not available for onnx/qnn on galaxy-s24; "
                                        "it works with: tflite/qnn, executorch/xnnpack, tflite/xnnpack"):
        make_plan(load_profile("galaxy-s24"), quant="int8-qat")


def test_dynamic_is_not_offered_for_npu_or_tensorrt():
    with pytest.raises(PlanError, match="--quant int8-dynamic is not available for onnx/tensorrt"):
        make_plan(load_profile("jetson-orin-nano"), quant="int8-dynamic")
    assert make_plan(load_profile("jetson-orin-nano"), fmt="onnx", backend="cpu", quant="int8-dynamic").quant_scheme == {
        "scheme": "int8-dynamic", "per_channel": True, "calib_samples": 0}


def test_int4_only_on_executorch_xnnpack():
    plan = make_plan(load_profile("raspberry-pi-5"), fmt="executorch", quant="int4-weight-only", group_size=64)
    assert plan.precision == "int4-weight" and plan.quant_scheme["group_size"] == 64
    with pytest.raises(PlanError, match="--quant int4-weight-only is not available for tflite/xnnpack on "
                                        "raspberry-pi-5; it works with: executorch/xnnpack"):
        make_plan(load_profile("raspberry-pi-5"), quant="int4-weight-only")


def test_auto_uses_the_profile_recommendation():
    assert make_plan(load_profile("pixel8"), quant="auto").quant == "int8"
    assert make_plan(load_profile("galaxy-s24"), quant="auto").precision == "int8"
    assert make_plan(load_profile("jetson-orin-nano"), quant="auto").precision == "fp16"
    iphone = make_plan(load_profile("iphone-15-pro"), quant="auto")  # Core ML's own PT2E weight quantizer
    assert (iphone.backend, iphone.quant, iphone.precision) == ("coreml", "int8-weight-only", "int8-weight")


def test_fp16_on_the_gpu_and_npu_delegates():
    assert make_plan(load_profile("pixel8"), backend="vulkan", quant="fp16").precision == "fp16"
    assert make_plan(load_profile("iphone-15-pro"), quant="fp16").validation == "host-twin"
    with pytest.raises(PlanError, match="--quant fp16 is not available for executorch/xnnpack on pixel8"):
        make_plan(load_profile("pixel8"), quant="fp16")


def test_mixed_scheme_round_trips_with_its_float_layers():
    scheme = SCHEMES["mixed"](calib_samples=64, float_layers=("features.0",))
    data = json.loads(json.dumps(scheme.to_dict()))  # as the manifest stores it: a list
    assert data["float_layers"] == ["features.0"]
    assert scheme_from_dict(data) == scheme and scheme_from_dict(data).float_layers == ("features.0",)


def test_mixed_is_planned_where_a_backend_can_keep_layers_float():
    plan = make_plan(load_profile("pixel8"), quant="mixed", keep_float=("features.0",), max_accuracy_drop=0.5)
    assert plan.stages == ("load", "export", "validate", "analyze", "quantize", "validate", "bundle")
    assert plan.quant_scheme["float_layers"] == ("features.0",) and plan.max_accuracy_drop == 0.5
    assert make_plan(load_profile("galaxy-s24"), quant="mixed").backend == "qnn"
    assert make_plan(load_profile("raspberry-pi-5"), quant="mixed").format == "tflite"
    with pytest.raises(PlanError, match="--quant mixed is not available for executorch/vulkan on pixel8; "
                                        "it works with: executorch/xnnpack, tflite/xnnpack, onnx/cpu"):
        make_plan(load_profile("pixel8"), backend="vulkan", quant="mixed")
    with pytest.raises(PlanError, match="--keep-float applies to --quant mixed, not --quant int8"):
        make_plan(load_profile("pixel8"), quant="int8", keep_float=("features.0",))
    with pytest.raises(PlanError, match="--max-accuracy-drop must be >= 0"):
        make_plan(load_profile("pixel8"), quant="int8", max_accuracy_drop=-1)


@pytest.mark.parametrize("device,quant", [("pixel8", "int8"), ("jetson-orin-nano", "fp16"),
                                          ("iphone-15-pro", "int8-weight-only")])
def test_build_quantizes_as_the_profile_recommends_by_default(device, quant, root):
    from click.testing import CliRunner

    from edgekit.cli import cli

    result = CliRunner().invoke(cli, ["build", "-d", device, "--project", str(root), "--dry-run"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps at the terminal width
    assert f"quantization {quant}" in text and f"profile recommends {quant} validation" in text

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.errors import ProfileError
from edgekit.profiles import BUILTIN_DIR, DeviceProfile, ProfileRegistry, load_profile, parse_profile_file

SHIPPED = ["galaxy-s24", "host-cpu", "iphone-15-pro", "jetson-orin-nano", "pixel8", "raspberry-pi-5"]
# DESIGN.md's table: device -> default format/backend
DEFAULTS = {
    "pixel8": ("executorch", "xnnpack"),
    "galaxy-s24": ("onnx", "qnn"),
    "iphone-15-pro": ("executorch", "coreml"),
    "jetson-orin-nano": ("onnx", "tensorrt"),
    "raspberry-pi-5": ("tflite", "xnnpack"),
    "host-cpu": ("executorch", "xnnpack"),
}


def test_shipped_profiles_load_with_design_defaults(isolated_env):
    reg = ProfileRegistry()
    assert reg.names() == SHIPPED
    for p in reg.load_all():
        assert (p.default.format, p.default.backend) == DEFAULTS[p.id]
        assert p.cpu_cores > 0 and p.memory_gb >= 4
        assert p.budgets.max_accuracy_drop == 1.0


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_dict_round_trip(name, isolated_env):
    p = load_profile(name)
    again = DeviceProfile.model_validate(p.model_dump())
    assert again == p
    assert DeviceProfile.model_validate_json(p.model_dump_json()) == p


def test_profiles_are_frozen(isolated_env):
    p = load_profile("pixel8")
    with pytest.raises(Exception):
        p.cpu_cores = 1


def test_unknown_device_lists_known_and_closest(isolated_env):
    with pytest.raises(ProfileError) as e:
        load_profile("pixle8")
    msg = str(e.value)
    assert "Did you mean 'pixel8'?" in msg
    for name in SHIPPED:
        assert name in msg


def _copy_profile(tmp_path: Path, name: str = "pixel8", new_id: str = "mydev", edit=lambda s: s) -> Path:
    text = (BUILTIN_DIR / f"{name}.toml").read_text().replace(f'id = "{name}"', f'id = "{new_id}"')
    path = tmp_path / f"{new_id}.toml"
    path.write_text(edit(text))
    return path


def test_malformed_toml_names_file(tmp_path):
    path = _copy_profile(tmp_path, edit=lambda s: s.replace("cpu_cores = 9", "cpu_cores = = 9"))
    with pytest.raises(ProfileError, match=r"mydev\.toml: not valid TOML"):
        parse_profile_file(path)


def test_missing_field_is_named(tmp_path):
    path = _copy_profile(tmp_path, edit=lambda s: s.replace('soc = "Google Tensor G3 (4 nm, Samsung)"\n', ""))
    with pytest.raises(ProfileError, match=r"mydev\.toml: field 'soc' is missing"):
        parse_profile_file(path)


def test_bad_value_lists_allowed_values(tmp_path):
    path = _copy_profile(tmp_path, edit=lambda s: s.replace('transport = "adb"', 'transport = "usb"'))
    with pytest.raises(ProfileError) as e:
        parse_profile_file(path)
    assert "field 'transport'" in str(e.value) and "'adb', 'ssh' or 'local'" in str(e.value)


def test_unknown_backend_lists_allowed(tmp_path):
    path = _copy_profile(tmp_path, edit=lambda s: s.replace('backend = "vulkan"', 'backend = "metal"'))
    with pytest.raises(ProfileError) as e:
        parse_profile_file(path)
    assert "'metal'" in str(e.value) and "xnnpack, coreml, vulkan" in str(e.value)


def test_unsupported_schema_version(tmp_path):
    path = _copy_profile(tmp_path, edit=lambda s: s.replace("schema_version = 1", "schema_version = 7"))
    with pytest.raises(ProfileError, match="schema_version 7 is not supported"):
        parse_profile_file(path)


def test_id_must_match_file_name(tmp_path):
    path = _copy_profile(tmp_path)
    path.rename(tmp_path / "other.toml")
    with pytest.raises(ProfileError, match="file is named 'other'"):
        parse_profile_file(tmp_path / "other.toml")


def test_user_profiles_dir_by_option_and_env(tmp_path, monkeypatch, isolated_env):
    _copy_profile(tmp_path, new_id="my-board")
    result = CliRunner().invoke(cli, ["--profiles-dir", str(tmp_path), "profiles", "show", "my-board", "--json"])
    assert result.exit_code == 0, result.output
    assert '"id": "my-board"' in result.output
    monkeypatch.setenv("EDGEKIT_PROFILES_DIR", str(tmp_path))
    assert "my-board" in ProfileRegistry().names()


def test_cli_profiles_list_and_show(isolated_env):
    runner = CliRunner()
    out = runner.invoke(cli, ["profiles", "list"])
    assert out.exit_code == 0
    for name in SHIPPED:
        assert name in out.output
    show = runner.invoke(cli, ["profiles", "show", "jetson-orin-nano"])
    assert show.exit_code == 0 and "onnx/tensorrt" in show.output and "Cortex-A78AE" in show.output
    bad = runner.invoke(cli, ["profiles", "show", "pixel9"])
    assert bad.exit_code == 2 and bad.output.startswith("error: unknown device 'pixel9'")
    assert "Traceback" not in bad.output

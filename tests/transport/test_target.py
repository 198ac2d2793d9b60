"""Parsing ``--on`` targets, the device-side start script, and `adb devices` output."""

from __future__ import annotations

import json
import sys
import time

import pytest

from edgekit.transport.adb import parse_devices
from edgekit.transport.base import (
    InfraError,
    Target,
    TargetError,
    parse_target,
    run_process,
)
from edgekit.transport.shell import NO_PYTHON, runner_script
from edgekit.transport.ssh import SshTransport

from .helpers import alive


def test_local_and_adb_forms():
    assert parse_target("local") == Target("local")
    assert parse_target("local?python=/opt/py/bin/python").python == "/opt/py/bin/python"
    assert parse_target("adb") == Target("adb")
    # a network device's serial holds a colon: only the first one separates
    assert parse_target("adb:192.168.1.7:5555").serial == "192.168.1.7:5555"
    assert parse_target("adb:R5CT1234?python=/data/local/tmp/py/bin/python3").python == "/data/local/tmp/py/bin/python3"


def test_emu_form():
    assert parse_target("emu:raspberry-pi-5") == Target("emu", profile="raspberry-pi-5")
    t = parse_target("emu:pixel8?cpu=max,sme=off")
    assert (t.kind, t.profile, t.cpu, str(t)) == ("emu", "pixel8", "max,sme=off", "emu:pixel8?cpu=max,sme=off")
    with pytest.raises(TargetError, match="--python does not apply"):
        parse_target("emu:pixel8", python="/usr/bin/python3")


def test_ssh_form_with_options_and_cli_overrides(tmp_path):
    key = tmp_path / "id"
    key.write_text("a key file")
    t = parse_target(f"ssh://pi@raspberrypi.local:2222?python=/usr/bin/python3&identity={key}"
                     "&ssh_option=ProxyJump=gw&ssh_option=Compression=yes")
    assert (t.kind, t.user, t.host, t.port, t.python, t.identity) == (
        "ssh", "pi", "raspberrypi.local", 2222, "/usr/bin/python3", key)
    assert t.ssh_options == ("ProxyJump=gw", "Compression=yes")
    assert str(t) == "ssh://pi@raspberrypi.local:2222"
    # explicit flags win over the spec's query; extra -o options add up
    t2 = parse_target("ssh://pi@h?python=/a", python="/b", ssh_options=("ServerAliveInterval=9",))
    assert (t2.python, t2.ssh_options, t2.port, t2.user) == ("/b", ("ServerAliveInterval=9",), None, "pi")
    assert str(parse_target("ssh://root@[::1]:22")) == "ssh://root@[::1]:22"


@pytest.mark.parametrize("spec, message", [
    ("usb", "unknown target 'usb'"),
    ("ssh://", "no host"),
    ("ssh://pi@host:99999", "port must be a number"),
    ("ssh://pi:secret@host", "passwords are not supported"),
    ("ssh://pi@host/home", "a path is not allowed"),
    ("ssh://pi@host?pyton=/usr/bin/python3", "unknown option 'pyton'"),
    ("adb?identity=/k", "unknown option 'identity'"),
    ("adb:", "give the device serial"),
    ("emu:", "give a device profile"),
    ("emu:pixel8?python=/usr/bin/python3", "unknown option 'python'"),
    ("emu:pixel8?cpu=max;rm", "cpu must be a QEMU CPU model"),
    ("ssh://pi@host?ssh_option=-oProxyCommand=x", "must be Key=Value"),
])
def test_bad_targets_are_refused_with_a_reason(spec, message):
    with pytest.raises(TargetError, match=message):
        parse_target(spec)


def test_user_ssh_options_come_first_so_they_win(tmp_path):
    t = parse_target("ssh://pi@h:2200", ssh_options=("StrictHostKeyChecking=yes",))
    opts = SshTransport(t, known_hosts=tmp_path / "kh")._options()
    pairs = [opts[i + 1] for i in range(0, len(opts), 2)]
    assert pairs.index("StrictHostKeyChecking=yes") < pairs.index("StrictHostKeyChecking=accept-new")
    assert {"BatchMode=yes", "Port=2200", f"UserKnownHostsFile={tmp_path / 'kh'}"} <= set(pairs)


def test_parse_devices_reads_the_real_clients_listing():
    text = ("* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
            "List of devices attached\nemulator-5554\tdevice\nR5CT1234\tunauthorized\n"
            "0123abcd\tno permissions (user in plugdev group; are your udev rules wrong?)\n\n")
    assert parse_devices(text) == {"emulator-5554": "device", "R5CT1234": "unauthorized",
                                   "0123abcd": "no permissions (user in plugdev group; are your udev rules wrong?)"}
    assert parse_devices("List of devices attached\n\n") == {}


def test_start_script_runs_in_sh_with_a_clean_environment(tmp_path):
    """The script the device runs, run here by dash: pid file, empty environment, the runner's argv."""
    workdir = tmp_path / "w d"  # a space, to check the quoting
    (workdir / "runner" / "edgekit_runner").mkdir(parents=True)
    (workdir / "runner" / "edgekit_runner" / "__main__.py").write_text(
        "import json, os, sys\nprint(json.dumps({'argv': sys.argv[1:], 'env': sorted(os.environ)}))\n")
    script = runner_script(str(workdir), sys.executable, ["--runs", "3"], 60)
    c = run_process(["sh", "-c", script], 30, env={"PATH": "/usr/bin:/bin", "HOME": "/root", "SECRET": "x"})
    assert c.rc == 0, c.stderr
    out = json.loads(c.stdout)
    assert out["argv"] == [f"{workdir}/bundle", "--out", f"{workdir}/report.json", "--runs", "3"]
    assert set(out["env"]) <= {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH", "LC_CTYPE"}  # SECRET did not leak
    assert int((workdir / "runner.pid").read_text()) > 0

    c = run_process(["sh", "-c", runner_script(str(workdir), "/nonexistent/python", [], 60)], 30)
    assert c.rc == NO_PYTHON and "no Python interpreter '/nonexistent/python'" in c.stderr

    # "~/..." is the device user's home, as a user would write it in ?python=
    home = tmp_path / "home"
    (home / "venv bin").mkdir(parents=True)
    (home / "venv bin" / "python").symlink_to(sys.executable)
    c = run_process(["sh", "-c", runner_script(str(workdir), "~/venv bin/python", [], 60)], 30,
                    env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert c.rc == 0, c.stderr
    assert json.loads(c.stdout)["argv"][0] == f"{workdir}/bundle"


def test_run_process_kills_the_whole_group_at_the_timeout(tmp_path):
    pid_file = tmp_path / "child"
    c = run_process(["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], 0.5)
    assert c.timed_out
    child, deadline = int(pid_file.read_text()), time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:  # SIGKILL is delivered asynchronously: under load the
        time.sleep(0.05)                                  # child can take a moment to die
    assert not alive(child)
    # a missing program is an infrastructure error that names it, not a traceback
    with pytest.raises(InfraError, match="no-such-tool is not installed") as e:
        run_process(["no-such-tool"], 1)
    assert not e.value.retryable

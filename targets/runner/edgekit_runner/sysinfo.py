"""Facts about the device a report was measured on: OS, kernel, CPU, cores, memory, Python, clocks, heat.

Read from the standard library, ``/proc`` and ``/sys`` (Linux, Android, Raspberry Pi OS,
Jetson L4T). A fact that cannot be read here is ``None`` and ``unavailable`` says why, so a
reader can tell "not measured" from a real value. Governor and temperatures matter for
trusting a latency: a throttled or powersave CPU is slower, and that is not the model's fault.

>>> facts = collect(); facts["cpu_model"], facts["cores_logical"]  # doctest: +SKIP
('Intel(R) Xeon(R) Processor @ 2.80GHz', 2)
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

PROC = Path("/proc")
SYS = Path("/sys")
# Arm Ltd (implementer 0x41) core part numbers on the boards and phones edgekit targets
ARM_CORES = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
             "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
             "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4"}


def collect() -> dict[str, Any]:
    """Every fact this module knows how to read, plus ``unavailable``: {fact: reason}."""
    facts: dict[str, Any] = {
        "os": platform.system(), "os_release": _os_release(), "kernel": platform.release(),
        "platform": platform.platform(), "arch": platform.machine(), "node": platform.node(),
        "python": platform.python_version(), "python_implementation": platform.python_implementation(),
        "cores_logical": os.cpu_count(),
    }
    unavailable: dict[str, str] = {}

    def put(name: str, value: Any, reason: str) -> None:
        facts[name] = value
        if value is None:
            unavailable[name] = reason

    put("cores_affinity", len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "this platform has no sched_getaffinity")
    cpu_model, why = _cpu_model()
    put("cpu_model", cpu_model, why)
    board, why = _board()
    put("board", board, why)
    mem, why = _mem_total_mb()
    put("mem_total_mb", mem, why)
    put("loadavg", list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "os.getloadavg is missing")
    governors, why = _per_cpu("cpufreq/scaling_governor")
    put("cpufreq_governor", governors, why)
    freqs, why = _per_cpu("cpufreq/scaling_cur_freq")
    put("cpufreq_cur_mhz", {k: int(v) / 1000 for k, v in freqs.items()} if freqs else None, why)
    thermal, why = _thermal_c()
    put("thermal_c", thermal, why)
    facts["unavailable"] = unavailable
    return facts


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _os_release() -> str | None:
    if shutil.which("getprop"):  # Android (Termux): the build, not the Linux userland
        release = _getprop("ro.build.version.release")
        return f"Android {release}" if release else None
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except (OSError, AttributeError):  # AttributeError: Python < 3.10
        return platform.version() or None


def _getprop(name: str) -> str | None:
    try:
        out = subprocess.run(["getprop", name], check=False, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _cpu_model() -> tuple[str | None, str]:
    text = _read(PROC / "cpuinfo")
    if text is None:
        return platform.processor() or None, f"{PROC / 'cpuinfo'} is not readable and platform.processor() is empty"
    pairs = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())]
    for key in ("model name", "hardware", "cpu model"):  # x86, Arm SoCs with a name, MIPS
        name = next((v for k, v in pairs if k == key and v), None)
        if name:
            return name, ""
    parts = Counter(v for k, v in pairs if k == "cpu part")  # Arm: one block per core, no name
    if parts:
        arm = {v for k, v in pairs if k == "cpu implementer"} == {"0x41"}
        return " + ".join(f"{n}x {ARM_CORES.get(p, f'part {p}') if arm else f'part {p}'}"
                          for p, n in parts.items()), ""
    return None, f"{PROC / 'cpuinfo'} names no CPU model"


def _board() -> tuple[str | None, str]:
    model = _read(PROC / "device-tree" / "model") or _read(SYS / "firmware" / "devicetree" / "base" / "model")
    if model:  # Raspberry Pi, Jetson
        return model.rstrip("\x00"), ""
    if shutil.which("getprop"):
        name = " ".join(filter(None, (_getprop("ro.product.manufacturer"), _getprop("ro.product.model"))))
        if name:
            return name, ""
    product = _read(SYS / "class" / "dmi" / "id" / "product_name")
    if product:
        return product, ""
    return None, "no device-tree model, Android properties or DMI product name"


def _mem_total_mb() -> tuple[float | None, str]:
    text = _read(PROC / "meminfo")
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024, ""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, ""
    except (ValueError, OSError, AttributeError):
        return None, f"{PROC / 'meminfo'} is not readable and sysconf has no SC_PHYS_PAGES"


def _per_cpu(rel: str) -> tuple[dict[str, str] | None, str]:
    base = SYS / "devices" / "system" / "cpu"
    values = {p.parent.parent.name: v for p in sorted(base.glob(f"cpu[0-9]*/{rel}")) if (v := _read(p))}
    if not values:
        return None, f"no readable {base}/cpu*/{rel} (no cpufreq driver, or a VM/container)"
    return values, ""


def _thermal_c() -> tuple[dict[str, float] | None, str]:
    base = SYS / "class" / "thermal"
    temps: dict[str, float] = {}
    for zone in sorted(base.glob("thermal_zone*")):
        raw = _read(zone / "temp")
        if raw and raw.lstrip("-").isdigit():
            temps[f"{zone.name}:{_read(zone / 'type') or '?'}"] = int(raw) / 1000  # millidegrees Celsius
    if not temps:
        return None, f"no readable {base}/thermal_zone*/temp (no thermal sensors exposed, or a VM/container)"
    return temps, ""

"""Qualcomm's NPU on the host: compile a QDQ ONNX model ahead of time for one Snapdragon's Hexagon HTP, and
run it on Qualcomm's HTP emulator.

Both come from PyPI's ``onnxruntime-qnn`` (``pip install 'edgekit[qnn]'``): a plugin execution provider for
the stock ``onnxruntime`` with Qualcomm's QNN libraries. On Linux x86-64 its ``libQnnHtp.so`` *emulates* the
HTP: it computes what the NPU computes (same graph preparation, same int8/uint8 arithmetic), 60-100x slower
than the CPU EP, so its timings say nothing about the phone and edgekit never reports them as the device's.
The QNN libraries are under Qualcomm's AI Stack License: edgekit depends on the PyPI package as an optional
extra and never copies them into a bundle or a wheel.

- :func:`placement`: which nodes the QNN EP takes for the profile's chip, and the ones it rejects (named);
- :func:`compile_context`: the EPContext model (``model_ctx.onnx``) and its QNN context binary
  (``model_ctx_qnn.bin``) through ONNX Runtime's compile API (``ModelCompiler``): what a phone loads without
  compiling the model at first start;
- the emulator run itself is the runner's (``edgekit_runner.runtimes``, target ``QNNExecutionProvider``),
  which the phone uses too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, PlanError

INSTALL = "pip install 'edgekit[qnn]'"
QNN = "QNNExecutionProvider"
CONTEXT_FILE = "model_ctx.onnx"


def available() -> bool:
    """``onnxruntime-qnn`` is installed (the emulator and the ahead-of-time compiler)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime_qnn") is not None


def require() -> None:
    if not available():
        raise EdgekitError(f"the QNN HTP emulator and compiler are not installed: {INSTALL}")


def versions() -> dict[str, str]:
    import onnxruntime_qnn
    from onnxruntime_qnn.build_and_package_info import qnn_version

    return {"onnxruntime_qnn": onnxruntime_qnn.__version__, "qnn": qnn_version}


def _options(soc_model: int, htp_arch: int, *, record: bool = True, strict: bool = False) -> Any:
    import onnxruntime as ort
    from edgekit_runner.runtimes import qnn_provider_options

    provider_options, _ = qnn_provider_options(ort, soc_model, htp_arch)  # the runner's, so both run the same
    opts = ort.SessionOptions()
    if record:
        opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if strict:
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    opts.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == QNN], provider_options)
    return opts


def placement(model: Path, soc_model: int, htp_arch: int, chip: str) -> dict[str, Any]:
    """Every node on QNN for this chip, or :class:`PlanError` naming the nodes the QNN EP rejected."""
    import onnxruntime as ort

    require()
    sess = ort.InferenceSession(str(model), sess_options=_options(soc_model, htp_arch))
    on, off = 0, []
    for g in sess.get_provider_graph_assignment_info():
        for n in g.get_nodes():
            if g.ep_name == QNN:
                on += 1
            else:
                off.append(f"{n.op_type} (node {n.name!r})" if n.name else n.op_type)
    if off:
        raise PlanError(f"the Hexagon HTP of {chip} (v{htp_arch}) cannot run {len(off)} of {on + len(off)} nodes: "
                        f"{', '.join(off[:8])}{' ...' if len(off) > 8 else ''}: the QNN EP "
                        f"{versions()['qnn']} rejected them at compile time; build for another path "
                        "(--backend cpu) or change the model")
    return {"nodes": on, "nodes_on_qnn": on}


def compile_context(model: Path, soc_model: int, htp_arch: int) -> dict[str, Any]:
    """``model_ctx.onnx`` and its context binary beside ``model``, compiled for the chip; what was made."""
    import onnxruntime as ort

    require()
    out = model.parent / CONTEXT_FILE
    t0 = time.perf_counter()
    try:
        compiler = ort.ModelCompiler(_options(soc_model, htp_arch, record=False, strict=True), str(model),
                                     embed_compiled_data_into_model=False)
        compiler.compile_to_file(str(out))
    except Exception as e:
        raise EdgekitError(f"the QNN EP could not compile {model.name} for SoC model {soc_model} (HTP v{htp_arch}): "
                           f"{str(e).splitlines()[0][:300]}") from e
    seconds = time.perf_counter() - t0
    binaries = sorted(p.name for p in model.parent.glob("model_ctx*.bin"))
    if not binaries:
        raise EdgekitError(f"the QNN EP compiled {model.name} but wrote no context binary beside {out.name}")
    return {"file": CONTEXT_FILE, "binaries": binaries, "seconds": round(seconds, 3),
            "bytes": sum((model.parent / b).stat().st_size for b in binaries), **versions()}

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
- :func:`compile_tflite`: LiteRT's ahead-of-time compilation of a .tflite for the chip (``model_npu.tflite``),
  through the Qualcomm compiler plugin of the ai-edge-litert wheel with onnxruntime-qnn's QNN libraries;
  :func:`tflite_context_as_onnx` wraps the QNN context inside it in an ONNX EPContext node so that the
  emulator runs exactly what LiteRT compiled (LiteRT cannot run a compiled file on x86-64);
- the emulator run itself is the runner's (``edgekit_runner.runtimes``, target ``QNNExecutionProvider``),
  which the phone uses too.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
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


# --- LiteRT: the .tflite compiled ahead of time for the chip's NPU -------------------------------------------------

LITERT_FILE = "model_npu.tflite"


@contextlib.contextmanager
def _litert_qualcomm_sdk(scratch: Path) -> Iterator[None]:
    """Point LiteRT's Qualcomm compiler plugin at QNN libraries it can load.

    The plugin (``libLiteRtCompilerPlugin_Qualcomm.so``, in the ai-edge-litert wheel) finds Qualcomm's QNN
    libraries through ``ai_edge_litert_sdk_qualcomm.path_to_sdk_libs()``. That package downloads the SDK at
    install time from a site these machines cannot reach and then installs empty (exit 0). onnxruntime-qnn
    ships the same QNN release's x86-64 libraries (HTP, IR, Saver, System, and the libc++ they link) except
    ``libQnnLpai.so`` (the low-power AI backend), which the plugin links without calling it for the HTP; a
    stand-in linked to ``libQnnSystem.so`` satisfies the loader. A real SDK, when its package has one, is
    used as it is."""
    import importlib
    import sys
    import types

    try:
        real = importlib.import_module("ai_edge_litert_sdk_qualcomm")
        if any(Path(p, "libQnnHtp.so").is_file() for p in str(real.path_to_sdk_libs()).split(os.pathsep)):
            yield
            return
    except Exception:  # noqa: BLE001 - not installed, or installed without its SDK
        pass
    import onnxruntime_qnn

    libs = Path(onnxruntime_qnn.__file__).parent
    stub = scratch / "qnn-stub"
    stub.mkdir()
    (stub / "libQnnLpai.so").symlink_to(libs / "libQnnSystem.so")
    folders = [libs, libs.with_name(libs.name + ".libs"), stub]  # the libraries find their libc++ in .libs
    sdk = types.ModuleType("ai_edge_litert_sdk_qualcomm")
    sdk.path_to_sdk_libs = lambda: os.pathsep.join(str(f) for f in folders)  # type: ignore[attr-defined]
    saved = sys.modules.get("ai_edge_litert_sdk_qualcomm")
    sys.modules["ai_edge_litert_sdk_qualcomm"] = sdk
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("ai_edge_litert_sdk_qualcomm", None)
        else:
            sys.modules["ai_edge_litert_sdk_qualcomm"] = saved


def _tflite_ops(path: Path) -> list[str]:
    """The operator names of a .tflite file's first subgraph, in order (custom ops by their custom code)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    out = []
    for op in model.subgraphs[0].operators or []:
        custom = model.operatorCodes[op.opcodeIndex].customCode
        out.append(custom.decode() if custom else flatbuffer_utils.opcode_to_name(model, op.opcodeIndex))
    return out


def compile_tflite(model: Path, chip: str, htp_arch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model_npu.tflite`` beside ``model``: LiteRT's ahead-of-time compilation for the chip's NPU (every op in
    QNN context binaries inside DISPATCH_OP nodes), or :class:`PlanError` naming the ops it left to the CPU.
    Returns what was made and the placement (ops, ops on the NPU, partitions)."""
    import io
    import tempfile

    require()
    from ai_edge_litert.aot import aot_compile as aot
    from ai_edge_litert.aot.vendors.qualcomm import target as qualcomm

    if chip not in qualcomm.SocModel.__members__:
        raise PlanError(f"LiteRT's Qualcomm compiler does not know {chip}; it compiles for "
                        f"{', '.join(m for m in qualcomm.SocModel.__members__ if m != 'ALL')}")
    out = model.parent / LITERT_FILE
    with tempfile.TemporaryDirectory() as scratch, _litert_qualcomm_sdk(Path(scratch)):
        source, relu6 = _relu6_as_relu(model, Path(scratch))
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # its per-stage progress bars
                result = aot.aot_compile(str(source), output_dir=Path(scratch, "out"),
                                         target=qualcomm.Target(qualcomm.SocModel[chip]), keep_going=False)
        except Exception as e:
            raise EdgekitError(f"LiteRT's Qualcomm compiler could not compile {model.name} for {chip}: "
                               f"{_compiler_error(e)}") from e
        seconds = time.perf_counter() - t0
        if not result.models:
            raise EdgekitError(f"LiteRT's Qualcomm compiler produced nothing for {model.name} ({chip}): "
                               f"{result.failed_backends}")
        compiled = result.models[0]
        compiled.save(out, export_only=True)
    stats = compiled.partition_stats.subgraph_stats if compiled.partition_stats else []
    ops = _tflite_ops(out)
    left = [op for op in ops if op != "DISPATCH_OP"]
    if left or not stats or any(s.num_ops_offloaded != s.num_total_ops for s in stats):
        out.unlink()
        total = sum(s.num_total_ops for s in stats)
        raise PlanError(f"the Hexagon HTP of {chip} (v{htp_arch}) cannot run {len(left)} of {total} ops of "
                        f"{model.name}: {', '.join(sorted(set(left))) or '?'}: LiteRT's Qualcomm compiler (QNN "
                        f"{versions()['qnn']}) left them to the CPU; build for another path (--backend xnnpack) "
                        "or change the model")
    return {"file": LITERT_FILE, "binaries": [], "seconds": round(seconds, 3), "bytes": out.stat().st_size,
            "compiler": "ai_edge_litert.aot (LiteRT's Qualcomm compiler plugin)", "litert": _dist("ai-edge-litert"),
            "fused_relu6_compiled_as_relu": relu6, **versions()}, {"ops": sum(s.num_total_ops for s in stats),
                            "ops_on_npu": sum(s.num_ops_offloaded for s in stats),
                            "partitions": sum(s.num_partitions_offloaded for s in stats)}


RELU, RELU6 = 1, 3  # TFLite's ActivationFunctionType


def _relu6_as_relu(model: Path, scratch: Path) -> tuple[Path, dict[str, int]]:
    """The file to compile: ``model``, or a copy whose int8 ops with a fused RELU6 carry a fused RELU instead,
    where the two are the same op (the output's int8 range tops out at 6 or below, so int8 saturation clamps
    before 6 would). Measured here: LiteRT's Qualcomm compiler plugin (ai-edge-litert 2.3.0, QNN 2.51) compiles
    an int8 op with a fused RELU6 whose 6 lies beyond its int8 output range into something the HTP emulator
    computes wrongly (a conv + ReLU6 model: max error 0.56 on outputs of range 0.53, top-1 agreement 50% with
    LiteRT's CPU), and the same op with a fused RELU correctly (max error 0.004). The copy gives bit-identical
    outputs on LiteRT's CPU. A RELU6 whose output range goes past 6 compiles correctly (measured: max error
    0.04 on outputs of range 5.7, one int8 step) and is left as it is."""
    from ai_edge_litert.tools import flatbuffer_utils

    tree = flatbuffer_utils.read_model(str(model))
    counts = {"rewritten": 0, "kept": 0}
    for graph in tree.subgraphs or []:
        for op in graph.operators or []:
            options = op.builtinOptions
            if options is None or getattr(options, "fusedActivationFunction", None) != RELU6:
                continue
            q = graph.tensors[op.outputs[0]].quantization
            int8 = graph.tensors[op.outputs[0]].type == 9 and q is not None and q.scale is not None \
                and len(q.scale) == 1
            if int8 and (127 - int(q.zeroPoint[0])) * float(q.scale[0]) <= 6.0:
                options.fusedActivationFunction = RELU
                counts["rewritten"] += 1
            else:
                counts["kept"] += 1
    if not counts["rewritten"]:
        return model, counts
    copy = scratch / "relu6-as-relu" / model.name
    copy.parent.mkdir()
    flatbuffer_utils.write_model(tree, str(copy))
    return copy, counts


def _compiler_error(e: Exception) -> str:
    """The first line of the error and, when the compiler wrote a log (apply_plugin's "See FILE"), its end."""
    import re

    text = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    log = re.search(r"See (\S+\.error)", str(e))
    if log and Path(log.group(1)).is_file():
        tail = [ln.strip() for ln in Path(log.group(1)).read_text(errors="replace").splitlines() if ln.strip()]
        text += f" (compiler log: {' | '.join(tail[-3:])[:400]})"
    return text


def _dist(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def tflite_context_as_onnx(compiled: Path, out: Path) -> dict[str, Any]:
    """The QNN context binary inside LiteRT's compiled ``.tflite``, wrapped in an ONNX ``EPContext`` node, so that
    the QNN EP runs it on the HTP emulator (LiteRT itself cannot run a compiled file on x86-64).

    The compiled file's one subgraph must be one ``DISPATCH_OP`` from the graph's inputs to its outputs; its
    options name the QNN graph and where its context binary lies in the file. The wrapped graph keeps the
    .tflite's tensor names (the QNN graph's) and quantized types; their (scale, zero point) go into the ONNX
    metadata (``edgekit.io_quantization``), which the runner's ONNX Runtime adapter applies as its LiteRT
    adapter does. What it returns: the QNN graph's name and the context's size."""
    import json

    import onnx
    from ai_edge_litert.tools import flatbuffer_utils
    from edgekit_runner.runtimes import IO_QUANTIZATION
    from flatbuffers import flexbuffers
    from onnx import TensorProto, helper

    model = flatbuffer_utils.read_model(str(compiled))
    graph = model.subgraphs[0]
    ops = graph.operators or []
    if len(model.subgraphs) != 1 or len(ops) != 1 or _tflite_ops(compiled) != ["DISPATCH_OP"] \
            or list(ops[0].inputs) != list(graph.inputs) or list(ops[0].outputs) != list(graph.outputs):
        raise EdgekitError(f"{compiled.name} is not one NPU partition from its inputs to its outputs "
                           f"({len(model.subgraphs)} subgraphs; ops {_tflite_ops(compiled)})")
    options = flexbuffers.Loads(bytes(ops[0].customOptions))
    data = compiled.read_bytes()
    start, size = int(options["bytecode_offset"]), int(options["bytecode_size"])
    if start + size > len(data):
        raise EdgekitError(f"{compiled.name}: its NPU bytecode ({size} bytes at {start}) lies past the file's end")
    types = {0: TensorProto.FLOAT, 1: TensorProto.FLOAT16, 2: TensorProto.INT32, 3: TensorProto.UINT8,
             7: TensorProto.INT16, 9: TensorProto.INT8}

    def value_info(index: int) -> Any:
        t = graph.tensors[index]
        if t.type not in types:
            raise EdgekitError(f"{compiled.name}: tensor {t.name.decode()!r} has a TFLite type ({t.type}) the "
                               "wrapper does not map")
        return helper.make_tensor_value_info(t.name.decode(), types[t.type], [int(d) for d in t.shape])

    def quantization(index: int) -> list[float] | None:
        q = graph.tensors[index].quantization
        return [float(q.scale[0]), int(q.zeroPoint[0])] if q is not None and q.scale is not None \
            and len(q.scale) == 1 else None

    io = [*graph.inputs, *graph.outputs]
    node = helper.make_node("EPContext", [graph.tensors[i].name.decode() for i in graph.inputs],
                            [graph.tensors[i].name.decode() for i in graph.outputs], name=options["name"],
                            domain="com.microsoft", embed_mode=1, ep_cache_context=data[start:start + size],
                            source="QNN", main_context=1)
    wrapped = helper.make_model(
        helper.make_graph([node], "litert_npu_context", [value_info(i) for i in graph.inputs],
                          [value_info(i) for i in graph.outputs]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    quant = {graph.tensors[i].name.decode(): quantization(i) for i in io}
    helper.set_model_props(wrapped, {IO_QUANTIZATION: json.dumps({k: v for k, v in quant.items() if v})})
    onnx.save(wrapped, str(out))
    return {"graph": options["name"], "context_bytes": size}

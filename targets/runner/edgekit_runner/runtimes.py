"""One small adapter per runtime, all with the same face: ``run(list[ndarray]) -> list[ndarray]``.

Each runtime is imported only when a bundle needs it (:func:`import_runtime`). Every adapter
also offers ``bind(arrays)``: the inputs are converted and handed to the runtime once, and the
returned zero-argument call is the runtime's own inference call (``session.run``,
``interpreter.invoke``, ``method.execute``) -- what the runner times, as TFLite's
``benchmark_model`` and ``onnxruntime_perf_test`` do.

Full-integer TFLite models have int8/uint8 input and output tensors: the adapter quantizes
inputs and dequantizes outputs with each tensor's own (scale, zero_point), so callers always
see float arrays.

What actually ran is in ``LoadedModel.info``: runtime and version, the delegate or execution
provider used, the threads, and ``fallback`` (None, or why the bundle's target did not run).

Qualcomm's QNN execution provider (``target="QNNExecutionProvider"``) comes either built into the
onnxruntime package (Android builds) or as the ``onnxruntime-qnn`` plugin (PyPI, Linux x86-64 and Windows
on Arm), registered here with ``register_execution_provider_library`` and configured with the bundle's
SoC model and HTP architecture. On an x86-64 host the plugin's ``libQnnHtp.so`` is Qualcomm's functional
*emulator* of the HTP: it computes what the NPU computes, at a small fraction of its speed; ``info['qnn']``
says which of the two ran (``where``: ``htp-emulator`` or ``htp``). A bundle compiled ahead of time for its
chip (an EPContext model plus its QNN context binary, ``options['compiled']``) is loaded first, after a
check that it was compiled for the configured chip; if the QNN runtime cannot load it, the portable QDQ
model is compiled on the spot and ``info['qnn']['compiled_fallback']`` says why.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_runner.manifest import RUNTIMES

ORT_CPU = "CPUExecutionProvider"
# What to try, in order, for an ONNX Runtime target; the CPU EP always ends the chain.
ORT_CHAINS = {"TensorrtExecutionProvider": ("TensorrtExecutionProvider", "CUDAExecutionProvider")}
LITERT_GPU_LIBS = ("libtensorflowlite_gpu_delegate.so", "libLiteRtGpuAccelerator.so")


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str


@dataclass
class LoadedModel:
    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    info: dict[str, Any] = field(default_factory=dict)
    bind: Callable[[list[np.ndarray]], Callable[[], Any]] | None = None

    def bound(self, arrays: list[np.ndarray]) -> Callable[[], Any]:
        """A zero-argument call that runs one inference on ``arrays`` (converted once, here)."""
        return self.bind(arrays) if self.bind else functools.partial(self.run, arrays)


def load(path: str | Path, runtime: str, threads: int | None = None, target: str | None = None,
         options: dict[str, Any] | None = None) -> LoadedModel:
    """Load ``path`` in ``runtime`` ('executorch' | 'onnxruntime' | 'litert') with ``threads`` intra-op threads.

    ``target`` is the execution provider / delegate the bundle was built for; where it cannot
    run here the next one in its chain is used and ``info['fallback']`` says what and why.
    ``options``: the target's settings from the manifest (QNN: ``soc_model``, ``htp_arch``, ``compiled``).

    >>> model = load("build/jetson-orin-nano/model.onnx", "onnxruntime", 1, "TensorrtExecutionProvider")
    >>> model.info["providers"], model.info["fallback"]  # doctest: +SKIP
    (['CPUExecutionProvider'], 'ran on CPUExecutionProvider instead of TensorrtExecutionProvider: ...')
    """
    loaders = {"executorch": _executorch, "onnxruntime": _onnxruntime, "litert": _litert}
    if runtime not in loaders:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        return _onnxruntime(Path(path), threads, target, options)
    return loaders[runtime](Path(path), threads, target)


def import_runtime(runtime: str) -> None:
    """Import ``runtime``'s modules (so that load time can be told apart from import time).

    Raises ImportError naming what to install when the runtime is missing.
    """
    {"executorch": _import_executorch, "onnxruntime": _import_ort, "litert": _import_litert}[runtime]()


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- ExecuTorch

def _import_executorch() -> tuple[Any, Any, Any]:
    import torch  # ExecuTorch's Python runtime exchanges torch tensors
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    try:  # the quantized kernels (int8 embedding tables: embedding_byte) register themselves on import
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:
        pass

    return torch, Runtime, portable_lib


def _executorch(path: Path, threads: int | None, target: str | None) -> LoadedModel:
    torch, runtime_cls, portable_lib = _import_executorch()
    rt = runtime_cls.get()
    if target and not rt.backend_registry.is_available(target):
        registered = rt.backend_registry.registered_backend_names
        if target in registered:  # compiled in, but its init failed (XNNPACK: "Failed to initialize, status 0x5")
            raise RuntimeError(f"the model is delegated to {target}, which this ExecuTorch runtime has but could "
                               f"not initialise (is_available() is false; ExecuTorch's log on stderr says why; "
                               f"XNNPACK needs /sys/devices/system/cpu/possible and present to read the CPUs)")
        raise RuntimeError(f"the model is delegated to {target}, which this ExecuTorch runtime does not have "
                           f"(registered: {', '.join(registered)}); "
                           f"run a bundle built for one of those, or install an ExecuTorch build with {target}")
    if threads:  # XNNPACK and the portable kernels share ExecuTorch's one threadpool
        portable_lib._unsafe_reset_threadpool(threads)
    try:
        method = rt.load_program(str(path)).load_method("forward")
    except RuntimeError as e:  # "Failed to load program, error: 0x:23": name the code; the C++ log has details
        code = re.search(r"0x:?([0-9a-fA-F]+)", str(e))
        name = _ET_ERRORS.get(int(code.group(1), 16)) if code else None
        if name is None:
            raise
        raise RuntimeError(f"{e} ({name}; ExecuTorch's log on stderr says more)") from e
    meta = method.metadata
    inputs = [_et_info(f"input_{i}", meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
    outputs = [_et_info(f"output_{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]

    def tensors(arrays: list[np.ndarray]) -> list[Any]:
        # standard strides: ExecuTorch derives the dim order from them (size-1 axes included)
        return [torch.from_numpy(a).clone(memory_format=torch.contiguous_format) for a in arrays]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [o.detach().numpy().copy() for o in method.execute(tensors(arrays))]

    def bind(arrays: list[np.ndarray]) -> Callable[[], Any]:
        return functools.partial(method.execute, tensors(arrays))

    info = {"runtime": "executorch", "version": _version("executorch"), "target": target,
            "delegate": target or "portable kernels", "threads": threads,
            "threads_effective": portable_lib._threadpool_get_thread_count(), "fallback": None}
    return LoadedModel(run, inputs, outputs, info, bind)


# ExecuTorch's runtime::Error codes (runtime/core/error.h)
_ET_ERRORS = {0x01: "Internal", 0x02: "InvalidState", 0x10: "NotSupported", 0x11: "NotImplemented",
              0x12: "InvalidArgument", 0x13: "InvalidType", 0x14: "OperatorMissing", 0x20: "NotFound",
              0x21: "MemoryAllocationFailed", 0x22: "AccessFailed", 0x23: "InvalidProgram",
              0x24: "InvalidExternalData", 0x25: "OutOfResources", 0x30: "DelegateInvalidCompatibility",
              0x31: "DelegateMemoryAllocationFailed", 0x32: "DelegateInvalidHandle"}

# ExecuTorch ScalarType codes (c10 numbering) and names -> numpy dtype names
_ET_DTYPES = {"0": "uint8", "1": "int8", "3": "int32", "4": "int64", "5": "float16", "6": "float32",
              "7": "float64", "11": "bool", "byte": "uint8", "char": "int8", "int": "int32", "long": "int64",
              "half": "float16", "float": "float32", "double": "float64"}


def _et_info(name: str, meta: Any) -> TensorInfo:
    dtype = str(meta.dtype()).split(".")[-1].lower()
    return TensorInfo(name, list(meta.sizes()), _ET_DTYPES.get(dtype, dtype))


# ---------------------------------------------------------------- ONNX Runtime

def _import_ort() -> Any:
    import onnxruntime

    return onnxruntime


def ort_provider_chain(target: str | None) -> list[str]:
    """The execution providers to try for ``target``, best first, always ending with the CPU EP.

    >>> ort_provider_chain("TensorrtExecutionProvider")
    ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    chain = [p for p in ORT_CHAINS.get(target, (target,)) if p and p != ORT_CPU] if target else []
    return [*chain, ORT_CPU]


def _onnxruntime(path: Path, threads: int | None, target: str | None,
                 options: dict[str, Any] | None = None) -> LoadedModel:
    ort = _import_ort()
    qnn: dict[str, Any] | None = None
    if target == QNN:
        path, qnn = _qnn_setup(ort, path, options or {})
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.record_ep_graph_assignment_info", "1")  # which EP ran which node
    # On x86-64 CPUs with AVX2 or AVX-512 but no VNNI, the CPU EP's default u8s8 int8 kernels add pairs of
    # products in 16 bits (vpmaddubsw) and saturate: int8 models lose accuracy on those hosts only (digits
    # int8: 97.8% instead of 99.2%). This option makes ORT use its exact u8u8 kernels there; it has no effect
    # on VNNI CPUs or on arm64.
    opts.add_session_config_entry("session.x64quantprecision", "1")
    chain = ort_provider_chain(target)
    try:
        sess, reasons = _ort_session(ort, path, opts, chain, qnn)
    except Exception as e:
        if qnn is None or not qnn.get("compiled_file"):
            raise
        # the device's QNN cannot load the ahead-of-time binary: compile the portable model here instead
        qnn["compiled_fallback"] = f"{path.name} did not load ({str(e).splitlines()[0][:300]}); ran {qnn['portable']}"
        del qnn["compiled_file"]
        path = path.with_name(qnn["portable"])
        sess, reasons = _ort_session(ort, path, opts, chain, qnn)
    nodes = _ort_nodes_per_provider(sess)
    registered = sess.get_providers()
    provider = next((p for p in registered if nodes.get(p)), registered[0]) if nodes else registered[0]
    inputs = [TensorInfo(i.name, list(i.shape), _ort_dtype(i.type)) for i in sess.get_inputs()]
    outputs = [TensorInfo(o.name, list(o.shape), _ort_dtype(o.type)) for o in sess.get_outputs()]
    names = [i.name for i in inputs]
    # A graph whose inputs/outputs are quantized tensors (LiteRT's NPU context wrapped in an EPContext node) says
    # so in its metadata: callers still see float arrays, quantized and dequantized as the LiteRT adapter does.
    io_q = json.loads((sess.get_modelmeta().custom_metadata_map or {}).get(IO_QUANTIZATION, "{}"))
    q_in = [{"dtype": t.dtype, "quantization": io_q.get(t.name) or (0.0, 0)} for t in inputs]
    q_out = [{"dtype": t.dtype, "quantization": io_q.get(t.name) or (0.0, 0)} for t in outputs]

    def feed(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, [_quantize(a, d) for a, d in zip(arrays, q_in)] if io_q else arrays))

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        got = sess.run(None, feed(arrays))
        return [_dequantize(a, d) for a, d in zip(got, q_out)] if io_q else list(got)

    def bind(arrays: list[np.ndarray]) -> Callable[[], Any]:
        return functools.partial(sess.run, None, feed(arrays))

    if provider != chain[0] and not reasons:
        reasons.append(f"{chain[0]} was registered but took none of the model's nodes")
    fallback = f"ran on {provider} instead of {chain[0]}: {'; '.join(reasons)}" if provider != chain[0] else None
    if fallback is None and nodes and chain[0] != ORT_CPU and len(nodes) > 1:
        others = {p: n for p, n in nodes.items() if p != chain[0]}
        fallback = (f"{chain[0]} ran {nodes[chain[0]]} of {sum(nodes.values())} nodes; the rest ran on "
                    + ", ".join(f"{p} ({n})" for p, n in others.items()))
    info = {"runtime": "onnxruntime", "version": ort.__version__, "target": target, "provider": provider,
            "providers": registered, "nodes_per_provider": nodes or None, "threads": threads,
            "threads_effective": opts.intra_op_num_threads or "onnxruntime default (physical cores)",
            "fallback": fallback, "model_file": path.name}
    if qnn is not None:
        off = _ort_nodes_off(sess, QNN)
        ran = provider == QNN
        info["qnn"] = {**qnn, "ran": ran, "where": qnn["where"] if ran else None,
                       "nodes_not_on_qnn": off[:20] + ([f"... {len(off) - 20} more"] if len(off) > 20 else [])}
    return LoadedModel(run, inputs, outputs, info, bind)


def _ort_session(ort: Any, path: Path, opts: Any, chain: list[str],
                 qnn: dict[str, Any] | None = None) -> tuple[Any, list[str]]:
    """A session with the first provider of ``chain`` that loads the model; and why the ones before did not."""
    available = ort.get_available_providers()
    reasons: list[str] = []
    for i, provider in enumerate(chain):
        if provider == QNN and qnn is not None and qnn.get("plugin"):  # the onnxruntime-qnn plugin EP
            try:
                plugin_opts = _copy_options(ort, opts)
                devices = [d for d in ort.get_ep_devices() if d.ep_name == QNN]
                plugin_opts.add_provider_for_devices(devices, qnn["provider_options"])
                return ort.InferenceSession(str(path), sess_options=plugin_opts), reasons
            except Exception as e:
                if qnn.get("compiled_file"):
                    raise  # the compiled binary did not load: the caller tries the portable model
                reasons.append(f"{provider} failed to start: {str(e).splitlines()[0][:300]}")
                continue
        if provider not in available:
            reasons.append(f"{provider} is not available in this onnxruntime build")
            continue
        try:  # enable_fallback=0: ORT must not swap providers behind our back, at load or at run time
            sess = ort.InferenceSession(str(path), sess_options=opts, enable_fallback=0,
                                        providers=[(p, qnn["provider_options"]) if p == QNN and qnn else p
                                                   for p in chain[i:] if p in available])
            if set(chain[:i]) - set(available):
                reasons.append(f"the build has {', '.join(available)}")
            return sess, reasons
        except Exception as e:  # an EP that fails to start is a fallback; the CPU EP failing is not
            if provider == ORT_CPU:
                raise
            reasons.append(f"{provider} failed to start: {str(e).splitlines()[0][:300]}")
    raise RuntimeError(f"no execution provider could load the model: {'; '.join(reasons)}")


QNN = "QNNExecutionProvider"
IO_QUANTIZATION = "edgekit.io_quantization"  # see _onnxruntime
# What QNN calls the chips it knows (soc_model) -- only to name them in messages; the profile holds the numbers.
QNN_SOCS = {30: "SM8350", 36: "SM8450", 42: "SM8475", 43: "SM8550", 57: "SM8650", 69: "SM8750"}


def qnn_provider_options(ort: Any, soc_model: Any, htp_arch: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The QNN EP's options for the HTP of this chip, and the onnxruntime-qnn plugin's versions ({} without it);
    the plugin is registered with ``ort`` when it is installed (registration is process-wide)."""
    options = {k: str(v) for k, v in (("soc_model", soc_model), ("htp_arch", htp_arch)) if v is not None}
    # the graph's input Quantize / output Dequantize run on the HTP too, not offloaded to the CPU EP
    options["offload_graph_io_quantization"] = "0"
    try:
        import onnxruntime_qnn
    except ImportError:
        options["backend_path"] = "libQnnHtp.so"  # an onnxruntime built with QNN (Android)
        return options, {}
    if QNN not in {d.ep_name for d in ort.get_ep_devices()}:
        ort.register_execution_provider_library(QNN, onnxruntime_qnn.get_library_path())
    options["backend_path"] = onnxruntime_qnn.get_qnn_htp_path()
    from onnxruntime_qnn.build_and_package_info import qnn_version

    return options, {"onnxruntime_qnn": onnxruntime_qnn.__version__, "qnn_version": qnn_version}


def _qnn_setup(ort: Any, path: Path, options: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Register the onnxruntime-qnn plugin when it is installed, pick the model to load (the ahead-of-time
    compiled one when the bundle has it), and check that it was compiled for the configured chip."""
    import platform

    qnn: dict[str, Any] = {"soc_model": options.get("soc_model"), "htp_arch": options.get("htp_arch"),
                           "portable": path.name}
    provider_options, plugin = qnn_provider_options(ort, options.get("soc_model"), options.get("htp_arch"))
    qnn.update(plugin=bool(plugin), **plugin)
    emulated = platform.machine().lower() in ("x86_64", "amd64")
    qnn["where"] = "htp-emulator" if emulated else "htp"
    qnn["provider_options"] = provider_options
    compiled = options.get("compiled") or {}
    has_qnn = qnn["plugin"] or QNN in ort.get_available_providers()
    if has_qnn and compiled.get("file") and (path.parent / compiled["file"]).is_file():
        check_qnn_context(ort, path.parent / compiled["file"], options.get("soc_model"), options.get("htp_arch"))
        qnn["compiled_file"] = compiled["file"]
        return path.parent / compiled["file"], qnn
    return path, qnn


def qnn_context_target(ort: Any, path: Path) -> tuple[int, int] | None:
    """(htp_arch, soc_model) an EPContext model was compiled for, from the compatibility string the QNN EP
    writes into it ("v2:6:<QNN>:<API>:<arch>:<soc>:..."); None for a model that is not one."""
    try:
        info = ort.capi._pybind_state.get_compatibility_info_from_model(str(path), QNN)
    except Exception:  # noqa: BLE001 - an onnxruntime without the call, or a model without the entry
        return None
    parts = (info or "").split(":")
    if len(parts) < 6 or not parts[4].isdigit() or not parts[5].isdigit():
        return None
    return int(parts[4]), int(parts[5])


def check_qnn_context(ort: Any, path: Path, soc_model: int | None, htp_arch: int | None) -> None:
    """Refuse an EPContext model compiled for another chip than the one the QNN EP is configured for (the
    x86-64 emulator would run it anyway; a phone would reject it, or worse)."""
    found = qnn_context_target(ort, path)
    if found is None or soc_model is None:
        return
    arch, soc = found
    if (soc, arch) != (int(soc_model), int(htp_arch or arch)):
        raise RuntimeError(
            f"{path.name} was compiled for {QNN_SOCS.get(soc, f'SoC model {soc}')} (HTP v{arch}), but this QNN "
            f"EP is configured for {QNN_SOCS.get(int(soc_model), f'SoC model {soc_model}')} (HTP v{htp_arch}): "
            "rebuild the bundle for this device's profile, or load its portable model")


def _copy_options(ort: Any, opts: Any) -> Any:
    """Session options are consumed by a session that uses add_provider_for_devices: a fresh copy."""
    fresh = ort.SessionOptions()
    fresh.intra_op_num_threads = opts.intra_op_num_threads
    for key in ("session.record_ep_graph_assignment_info", "session.x64quantprecision"):
        value = opts.get_session_config_entry(key) if _has_entry(opts, key) else None
        if value is not None:
            fresh.add_session_config_entry(key, value)
    return fresh


def _has_entry(opts: Any, key: str) -> bool:
    try:
        opts.get_session_config_entry(key)
        return True
    except Exception:  # noqa: BLE001 - onnxruntime raises for a missing key
        return False


def _ort_nodes_off(sess: Any, provider: str) -> list[str]:
    """'OpType (node name)' of each node that did not run on ``provider`` (empty when this cannot be said)."""
    try:
        subgraphs = sess.get_provider_graph_assignment_info()
    except (AttributeError, RuntimeError):
        return []
    return [f"{n.op_type} ({n.name})" if n.name else n.op_type
            for g in subgraphs if g.ep_name != provider for n in g.get_nodes()]


def _ort_nodes_per_provider(sess: Any) -> dict[str, int]:
    """{provider: nodes it runs} (ONNX Runtime >= 1.23 records this); {} where this onnxruntime cannot say."""
    try:
        subgraphs = sess.get_provider_graph_assignment_info()
    except (AttributeError, RuntimeError):
        return {}
    counts: dict[str, int] = {}
    for subgraph in subgraphs:
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return counts


def _ort_dtype(t: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
            "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
            "tensor(int32)": "int32"}.get(t, t)


# ---------------------------------------------------------------- LiteRT / TFLite

def _import_litert() -> tuple[Any, Any, str, str]:
    """(Interpreter, load_delegate, distribution, version): ai-edge-litert, else tflite-runtime, else tensorflow."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "ai-edge-litert", _version("ai-edge-litert")
    except ImportError:
        pass
    try:  # the small runtime boards use (2.14 needs numpy<2)
        from tflite_runtime.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "tflite-runtime", _version("tflite-runtime")
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("no LiteRT runtime: install ai-edge-litert (or tflite-runtime, or tensorflow)") from None
    return tf.lite.Interpreter, tf.lite.experimental.load_delegate, "tensorflow", tf.__version__


def _litert(path: Path, threads: int | None, target: str | None) -> LoadedModel:
    interpreter_cls, load_delegate, name, version = _import_litert()
    delegates, delegate, fallback = [], "XNNPACK (the interpreter's default CPU delegate)", None
    if target and target != "XNNPACK delegate":
        errors = []
        for lib in LITERT_GPU_LIBS if target == "GPU delegate" else ():
            try:
                delegates = [load_delegate(lib)]
                delegate = f"{target} ({lib})"
                break
            except (ValueError, OSError, RuntimeError) as e:
                errors.append(f"{lib}: {str(e).splitlines()[0][:200]}")
        if not delegates:
            why = "; ".join(errors) or "this runtime has no such delegate"
            if "NPU" in target:  # tflite/qnn: model_npu.tflite is for LiteRT's CompiledModel API on the phone
                why = ("the NPU file (model_npu.tflite) runs through LiteRT's CompiledModel API with Qualcomm's "
                       "dispatch library (libLiteRtDispatch_Qualcomm.so), which an Android app bundles; this "
                       "Python runtime has no such library, so the portable model ran")
            fallback = f"ran on CPU (XNNPACK) instead of {target}: {why}"
    interp = interpreter_cls(model_path=str(path), num_threads=threads, experimental_delegates=delegates or None)
    interp.allocate_tensors()
    ins, outs = _in_signature_order(interp, interp.get_input_details(), "inputs"), \
        _in_signature_order(interp, interp.get_output_details(), "outputs")

    def feed(arrays: list[np.ndarray]) -> None:
        for d, a in zip(ins, arrays):
            interp.set_tensor(d["index"], _quantize(a, d))

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        feed(arrays)
        interp.invoke()
        return [_dequantize(interp.get_tensor(d["index"]), d) for d in outs]

    def bind(arrays: list[np.ndarray]) -> Callable[[], Any]:
        feed(arrays)  # set once, as benchmark_model does; invoke() leaves input tensors as they are
        return interp.invoke

    def info(d: dict) -> TensorInfo:
        return TensorInfo(d["name"], [int(s) for s in d["shape"]], np.dtype(d["dtype"]).name)

    meta = {"runtime": name, "version": version, "target": target, "delegate": delegate, "threads": threads,
            "threads_effective": threads or "interpreter default", "fallback": fallback,
            "io_quantized": any(np.dtype(d["dtype"]).kind in "iu" and d["quantization"][0] for d in ins + outs)}
    return LoadedModel(run, [info(d) for d in ins], [info(d) for d in outs], meta, bind)


def _in_signature_order(interp: Any, details: list[dict], kind: str) -> list[dict]:
    """Tensor details in the order of the exported function's arguments and results, read from the model's
    (single) signature; the interpreter's own lists need not follow it."""
    try:
        signatures = interp._get_full_signature_list()  # {key: {"inputs": {name: tensor index}, ...}}
    except AttributeError:
        return details
    if len(signatures) != 1:
        return details
    # TFLite keeps a signature's tensors in a std::map: by name, so args_10 sorts before args_2. The
    # exporter numbers them in argument order (args_0, args_1, ...; output_0, ...): sort by that number.
    named = next(iter(signatures.values()))[kind]
    order = [named[n] for n in sorted(named, key=_natural)]
    by_index = {d["index"]: d for d in details}
    return [by_index[i] for i in order if i in by_index] if set(order) == set(by_index) else details


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _quantize(a: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind not in "iu" or not scale:
        return a.astype(dtype, copy=False)
    lim = np.iinfo(dtype)
    # round(x / scale) then add the zero point (round half to even), as the backends' quantizers do
    return np.clip(np.round(a / scale) + zero, lim.min, lim.max).astype(dtype)


def _dequantize(a: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]).kind not in "iu" or not scale:
        return a
    return ((a.astype(np.float32) - zero) * scale).astype(np.float32)

"""One small adapter per runtime, all with the same face: ``run(list[ndarray]) -> list[ndarray]``.

Each runtime is imported only when a bundle needs it. Full-integer TFLite
models have int8/uint8 input and output tensors: the adapter quantizes inputs
and dequantizes outputs with each tensor's own (scale, zero_point), so callers
always see float arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str


@dataclass
class LoadedModel:
    run: Any  # Callable[[list[np.ndarray]], list[np.ndarray]]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    info: dict[str, Any] = field(default_factory=dict)


def load(path: str | Path, runtime: str, threads: int | None = None, target: str | None = None) -> LoadedModel:
    """Load ``path`` in ``runtime`` ('executorch' | 'onnxruntime' | 'litert').

    ``target`` is the execution provider / delegate the bundle was built for;
    where it is not available the CPU is used and ``info['fallback']`` says so.
    """
    loaders = {"executorch": _executorch, "onnxruntime": _onnxruntime, "litert": _litert}
    if runtime not in loaders:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(loaders)}")
    return loaders[runtime](Path(path), threads, target)


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _executorch(path: Path, threads: int | None, target: str | None) -> LoadedModel:
    import torch  # ExecuTorch's Python runtime exchanges torch tensors
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    meta = method.metadata
    inputs = [_et_info(f"input_{i}", meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
    outputs = [_et_info(f"output_{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        # standard strides: ExecuTorch derives the dim order from them (size-1 axes included)
        outs = method.execute([torch.from_numpy(a).clone(memory_format=torch.contiguous_format) for a in arrays])
        return [o.detach().numpy().copy() for o in outs]

    return LoadedModel(run, inputs, outputs, {"runtime": "executorch", "version": _version("executorch"),
                                              "target": target, "threads": threads})


# ExecuTorch ScalarType codes (c10 numbering) and names -> numpy dtype names
_ET_DTYPES = {"0": "uint8", "1": "int8", "3": "int32", "4": "int64", "5": "float16", "6": "float32",
              "7": "float64", "11": "bool", "byte": "uint8", "char": "int8", "int": "int32", "long": "int64",
              "half": "float16", "float": "float32", "double": "float64"}


def _et_info(name: str, meta: Any) -> TensorInfo:
    dtype = str(meta.dtype()).split(".")[-1].lower()
    return TensorInfo(name, list(meta.sizes()), _ET_DTYPES.get(dtype, dtype))


def _onnxruntime(path: Path, threads: int | None, target: str | None) -> LoadedModel:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    available = ort.get_available_providers()
    providers = [target, "CPUExecutionProvider"] if target and target in available else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    inputs = [TensorInfo(i.name, list(i.shape), _ort_dtype(i.type)) for i in sess.get_inputs()]
    outputs = [TensorInfo(o.name, list(o.shape), _ort_dtype(o.type)) for o in sess.get_outputs()]
    names = [i.name for i in inputs]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return list(sess.run(None, dict(zip(names, arrays))))

    used = sess.get_providers()
    info = {"runtime": "onnxruntime", "version": ort.__version__, "target": target, "providers": used,
            "threads": threads}
    if target and target not in used:
        info["fallback"] = f"{target} is not available here; ran on {used[0]}"
    return LoadedModel(run, inputs, outputs, info)


def _ort_dtype(t: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
            "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32"}.get(t, t)


def _litert(path: Path, threads: int | None, target: str | None) -> LoadedModel:
    try:  # the board's small runtime first, then the current LiteRT wheel
        from tflite_runtime.interpreter import Interpreter

        name, version = "tflite-runtime", _version("tflite-runtime")
    except ImportError:
        from ai_edge_litert.interpreter import Interpreter

        name, version = "ai-edge-litert", _version("ai-edge-litert")
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        for d, a in zip(ins, arrays):
            interp.set_tensor(d["index"], _quantize(a, d))
        interp.invoke()
        return [_dequantize(interp.get_tensor(d["index"]), d) for d in outs]

    def info(d: dict) -> TensorInfo:
        return TensorInfo(d["name"], [int(s) for s in d["shape"]], np.dtype(d["dtype"]).name)

    meta = {"runtime": name, "version": version, "target": target, "threads": threads,
            "io_quantized": any(np.dtype(d["dtype"]).kind in "iu" and d["quantization"][0] for d in ins + outs)}
    if target and target != "XNNPACK delegate":
        meta["fallback"] = f"{target} is not available in this runtime; ran on CPU (XNNPACK)"
    return LoadedModel(run, [info(d) for d in ins], [info(d) for d in outs], meta)


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

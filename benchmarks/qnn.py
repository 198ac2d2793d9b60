"""galaxy-s24's NPU paths on Qualcomm's HTP emulator: digits and the MobileNetV2-shaped network at 224x224,
(1) int8 QDQ for the QNN EP (ONNX Runtime's get_qnn_qdq_config), compiled ahead of time for SM8650 (HTP v75),
and (2) the full-integer .tflite compiled by LiteRT's Qualcomm plugin for SM8650; each run on the x86-64
emulator of onnxruntime-qnn, against the same int8 file on the CPU and PyTorch fp32 on the same inputs.

Per model and path: what went to the NPU, compile time and compiled size, emulator and CPU time per inference, task
accuracy (digits: the real eval split; MobileNetV2, random weights and inputs: agreement with fp32 PyTorch's
top-1, the only "accuracy" it has), top-1 agreement and max difference between the emulator and the CPU.
The emulator is a functional model: its time says how long validation takes here, never how fast the phone is.

    .venv/bin/python benchmarks/qnn.py [--mobilenet-samples 64]     # needs the qnn extra; writes results/qnn.*
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _results import write_results
from quantization import MODELS  # the same models and data as the quantization table


def run(name: str, fmt: str, model, calib, ev, labels, work: Path) -> dict:
    """One model on one NPU path: ``onnx`` (QDQ for the QNN EP, compiled to an EPContext model) or ``tflite``
    (full-integer .tflite compiled by LiteRT's Qualcomm plugin; its QNN context wrapped for the emulator)."""
    from edgekit import qnn
    from edgekit.export import EXPORTERS
    from edgekit.quantize.schemes import Int8Static
    from edgekit_runner import evaluate, runtimes

    out = work / f"{name}-{fmt}"
    out.mkdir()
    example = (torch.from_numpy(ev[:1]).clone(),)
    with torch.no_grad():
        reference = model(torch.from_numpy(ev)).numpy()
    t0 = time.perf_counter()
    result = EXPORTERS[fmt].export(model, example, "qnn", out, quant=Int8Static(calib_samples=len(calib)),
                                   calib=calib)
    export_s = time.perf_counter() - t0
    options = {"soc_model": 57, "htp_arch": 75}
    if fmt == "onnx":
        placed = qnn.placement(result.model_path, 57, 75, "SM8650")
        compiled = qnn.compile_context(result.model_path, 57, 75)
        options["compiled"] = {"file": compiled["file"]}
        emulated, on_npu, cpu_runtime = result.model_path, f"{placed['nodes_on_qnn']} nodes (all)", "onnxruntime"
    else:
        compiled, placed = qnn.compile_tflite(result.model_path, "SM8650", 75)
        emulated = out / "context.onnx"
        qnn.tflite_context_as_onnx(out / compiled["file"], emulated)
        on_npu = f"{placed['ops_on_npu']} ops (all), {placed['partitions']} partition"
        cpu_runtime = "litert"
    timed = {}
    outs = {}
    for label, m in (("emulator", runtimes.load(emulated, "onnxruntime", target=qnn.QNN, options=options)),
                     ("cpu", runtimes.load(result.model_path, cpu_runtime))):
        t0 = time.perf_counter()
        outs[label] = evaluate.run_dataset(m, ev)[0].reshape(reference.shape)
        timed[label] = (time.perf_counter() - t0) / len(ev) * 1000
        if label == "emulator":
            assert m.info["qnn"]["ran"] and not m.info["qnn"]["nodes_not_on_qnn"], m.info
            assert fmt != "onnx" or m.info["model_file"] == "model_ctx.onnx", m.info
    emu, cpu = outs["emulator"], outs["cpu"]
    row = {"model": name, "path": PATHS[fmt], "samples": len(ev), "on_npu": on_npu, "placement": placed,
           "export_s": round(export_s, 1), "compile_s": compiled["seconds"], "compiled_kib": compiled["bytes"] / 1024,
           "qnn": compiled["qnn"], "emulator_ms": timed["emulator"], "cpu_ms": timed["cpu"],
           "accuracy": {"pytorch_fp32": float((reference.argmax(1) == labels).mean()),
                        "cpu_int8": float((cpu.argmax(1) == labels).mean()),
                        "emulator_int8": float((emu.argmax(1) == labels).mean())},
           "cpu_int8_vs_fp32_max_abs_difference": float(np.abs(cpu - reference).max()),
           "emulator_vs_cpu": {"top1_agreement": float((emu.argmax(1) == cpu.argmax(1)).mean()),
                               "max_abs_difference": float(np.abs(emu - cpu).max()),
                               "output_range": float(np.abs(cpu).max())}}
    print(f"  {name} {fmt}: {row}", flush=True)
    return row


PATHS = {"onnx": "ONNX QDQ -> QNN EP context (model_ctx.onnx); CPU: onnxruntime CPU EP",
         "tflite": "int8 .tflite -> LiteRT AOT (model_npu.tflite); CPU: LiteRT"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mobilenet-samples", type=int, default=64,
                    help="random 224x224 inputs for MobileNetV2 on the emulator (about 1 s each here)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in MODELS.items():
            model, calib, ev, labels = make()
            if name == "mobilenet-v2":
                rng = np.random.default_rng(1)
                ev = rng.standard_normal((args.mobilenet_samples, 3, 224, 224), dtype=np.float32)
                with torch.no_grad():
                    labels = model(torch.from_numpy(ev)).argmax(1).numpy()  # fp32 PyTorch's top-1
            for fmt in PATHS:
                rows.append(run(name, fmt, model.eval(), calib, ev, labels, Path(tmp)))
    lines = ["| model | path | samples | on the NPU | compile s | compiled KiB | emulator ms/inference | "
             "CPU ms/inference | PyTorch fp32 | CPU int8 | emulator int8 | CPU int8 vs fp32 max abs diff | "
             "emulator vs CPU top-1 | emulator vs CPU max abs diff (output range) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, c = r["accuracy"], r["emulator_vs_cpu"]
        lines.append(f"| {r['model']} | {r['path']} | {r['samples']} | {r['on_npu']} | {r['compile_s']:.2f} | "
                     f"{r['compiled_kib']:.0f} | {r['emulator_ms']:.1f} | {r['cpu_ms']:.2f} | {a['pytorch_fp32']:.2%} | "
                     f"{a['cpu_int8']:.2%} | {a['emulator_int8']:.2%} | {r['cpu_int8_vs_fp32_max_abs_difference']:.3g} | "
                     f"{c['top1_agreement']:.1%} | "
                     f"{c['max_abs_difference']:.3g} ({c['output_range']:.3g}) |")
    note = ("Compiled for SM8650 (soc_model 57, HTP v75) with QNN " + rows[0]["qnn"] + " (onnxruntime-qnn 2.7.0): "
            "the ONNX path by ONNX Runtime's compile API, the .tflite by LiteRT's Qualcomm compiler plugin "
            "(ai-edge-litert's ai_edge_litert.aot), whose QNN context runs on the emulator wrapped in an ONNX EPContext "
            "node (LiteRT cannot run a compiled file on x86-64). Each path is compared with its own int8 file on the "
            "CPU. Emulated on this x86-64 host. digits: accuracy on the real eval split. mobilenet-v2 (random weights, "
            "random inputs, batch-norm statistics measured on its own activations): 'accuracy' is agreement with fp32 "
            "PyTorch's top-1; its top-1 margins are small (0.05 on average) against int8's own error, so two int8 "
            "runs (emulator, CPU) flip many top-1s against each other too: compare the emulator-vs-CPU difference "
            "with int8's own (CPU int8 vs fp32). The emulator's time is not the phone's.")
    write_results("qnn", "galaxy-s24 NPU path on Qualcomm's HTP emulator", "\n".join(lines) + "\n\n" + note, rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

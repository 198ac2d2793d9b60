"""galaxy-s24's NPU path on Qualcomm's HTP emulator: digits and the MobileNetV2-shaped network at 224x224,
int8 QDQ for the QNN EP (ONNX Runtime's get_qnn_qdq_config), compiled ahead of time for SM8650 (HTP v75) and
run on the x86-64 emulator of onnxruntime-qnn, against the CPU EP and PyTorch fp32 on the same inputs.

Per model: nodes on QNN, compile time and context-binary size, emulator and CPU EP time per inference, task
accuracy (digits: the real eval split; MobileNetV2, random weights and inputs: agreement with fp32 PyTorch's
top-1, the only "accuracy" it has), top-1 agreement and max difference between the emulator and the CPU EP.
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


def run(name: str, model, calib, ev, labels, work: Path) -> dict:
    from edgekit import qnn
    from edgekit.export import EXPORTERS
    from edgekit.quantize.schemes import Int8Static
    from edgekit_runner import evaluate, runtimes

    out = work / name
    out.mkdir()
    example = (torch.from_numpy(ev[:1]).clone(),)
    with torch.no_grad():
        reference = model(torch.from_numpy(ev)).numpy()
    t0 = time.perf_counter()
    result = EXPORTERS["onnx"].export(model, example, "qnn", out, quant=Int8Static(calib_samples=len(calib)),
                                      calib=calib)
    export_s = time.perf_counter() - t0
    placed = qnn.placement(result.model_path, 57, 75, "SM8650")
    compiled = qnn.compile_context(result.model_path, 57, 75)
    options = {"soc_model": 57, "htp_arch": 75, "compiled": {"file": compiled["file"]}}
    timed = {}
    outs = {}
    for label, m in (("emulator", runtimes.load(result.model_path, "onnxruntime", target=qnn.QNN, options=options)),
                     ("cpu_ep", runtimes.load(result.model_path, "onnxruntime"))):
        t0 = time.perf_counter()
        outs[label] = evaluate.run_dataset(m, ev)[0].reshape(reference.shape)
        timed[label] = (time.perf_counter() - t0) / len(ev) * 1000
        if label == "emulator":
            assert m.info["model_file"] == "model_ctx.onnx" and m.info["qnn"]["ran"], m.info
            assert not m.info["qnn"]["nodes_not_on_qnn"], m.info["qnn"]["nodes_not_on_qnn"]
    emu, cpu = outs["emulator"], outs["cpu_ep"]
    row = {"model": name, "samples": len(ev), "nodes_on_qnn": placed["nodes_on_qnn"], "export_s": round(export_s, 1),
           "compile_s": compiled["seconds"], "context_kib": compiled["bytes"] / 1024, "qnn": compiled["qnn"],
           "emulator_ms": timed["emulator"], "cpu_ep_ms": timed["cpu_ep"],
           "accuracy": {"pytorch_fp32": float((reference.argmax(1) == labels).mean()),
                        "cpu_ep_int8": float((cpu.argmax(1) == labels).mean()),
                        "emulator_int8": float((emu.argmax(1) == labels).mean())},
           "emulator_vs_cpu_ep": {"top1_agreement": float((emu.argmax(1) == cpu.argmax(1)).mean()),
                                  "max_abs_difference": float(np.abs(emu - cpu).max()),
                                  "output_range": float(np.abs(cpu).max())}}
    print(f"  {name}: {row}", flush=True)
    return row


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
            rows.append(run(name, model.eval(), calib, ev, labels, Path(tmp)))
    lines = ["| model | samples | nodes on QNN | compile s | context KiB | emulator ms/inference | CPU EP ms/inference | "
             "PyTorch fp32 | CPU EP int8 | emulator int8 | emulator vs CPU EP top-1 | max abs diff (output range) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, c = r["accuracy"], r["emulator_vs_cpu_ep"]
        lines.append(f"| {r['model']} | {r['samples']} | {r['nodes_on_qnn']} (all) | {r['compile_s']:.2f} | "
                     f"{r['context_kib']:.0f} | {r['emulator_ms']:.1f} | {r['cpu_ep_ms']:.2f} | {a['pytorch_fp32']:.2%} | "
                     f"{a['cpu_ep_int8']:.2%} | {a['emulator_int8']:.2%} | {c['top1_agreement']:.1%} | "
                     f"{c['max_abs_difference']:.3g} ({c['output_range']:.3g}) |")
    note = ("Compiled for SM8650 (soc_model 57, HTP v75) with QNN " + rows[0]["qnn"] + " (onnxruntime-qnn 2.7.0); "
            "emulated on this x86-64 host. digits: accuracy on the real eval split. mobilenet-v2 (random weights, "
            "random inputs): 'accuracy' is agreement with fp32 PyTorch's top-1. The emulator's time is not the phone's.")
    write_results("qnn", "galaxy-s24 NPU path on Qualcomm's HTP emulator", "\n".join(lines) + "\n\n" + note, rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

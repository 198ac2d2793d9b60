"""Which linear layers of a transformer to keep in float for XNNPACK's int8 recipe, chosen on the calibration split.

XNNPACK's int8 recipe for transformers (``Int8Dynamic(embeddings=True)``) quantizes every nn.Linear with
int8 weights per output channel and int8 activations per token at run time, and the embedding tables per
row. Its error is spread over all the layers (measured on MiniLM: no outlier layer), so no single layer
fixes it; a few of the most sensitive ones, kept float, buy back most of it. This module simulates those
numerics in PyTorch (it matches the ExecuTorch program to a cosine of 0.999 on MiniLM), measures on the
*calibration* split how much keeping each linear layer float alone improves the cosine to the fp32
outputs, and keeps the best ones float, one by one, until the cosine reaches ``target`` or the layers
kept float would cost more than ``max_extra_bytes``. The eval split is never looked at.

>>> layers, report = sensitive_linears(model, calib_inputs, target=0.9993, max_extra_bytes=4_000_000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np


def _fake_int8_activations(x: Any) -> Any:
    """Per token (last dimension's rows), asymmetric int8, as XNNPACK's qd8 does at run time."""
    import torch

    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-12)
    zero = (-128 - torch.round(lo / scale)).clamp(-128, 127)
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


def _fake_int8_rows(w: Any) -> Any:
    """Symmetric int8 per row (a linear layer's output channel; an embedding table's token)."""
    import torch

    scale = (w.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


@contextlib.contextmanager
def simulated_int8(model: Any, float_layers: set[str]) -> Iterator[None]:
    """``model`` computing with the recipe's int8 numerics (except ``float_layers``) inside the block."""
    import torch
    import torch.nn.functional as F

    saved: list[tuple[Any, str, Any]] = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name not in float_layers:
                w, b = _fake_int8_rows(module.weight.detach()), module.bias
                saved.append((module, "forward", module.__dict__.get("forward")))
                module.forward = (lambda w, b: lambda x: F.linear(_fake_int8_activations(x), w, b))(w, b)
            elif isinstance(module, torch.nn.Embedding):
                saved.append((module, "weight", module.weight.data))
                module.weight.data = _fake_int8_rows(module.weight.data)
        yield
    finally:
        for module, attr, value in reversed(saved):
            if attr == "weight":
                module.weight.data = value
            elif value is None:
                del module.forward  # back to the class's own forward
            else:
                module.forward = value


def _cosine_mean(model: Any, inputs: list[Any], reference: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        got = model(*inputs).numpy().reshape(len(reference), -1)
    ref = reference.reshape(len(reference), -1)
    return float(((got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)).mean())


def sensitive_linears(model: Any, calib: list[np.ndarray], target: float, max_extra_bytes: int,
                      progress: Any = lambda msg: None) -> tuple[list[str], dict[str, Any]]:
    """The linear layers to keep float (most sensitive first) and what was measured (on ``calib``)."""
    import torch

    inputs = [torch.from_numpy(a) for a in calib]
    with torch.no_grad():
        reference = model(*inputs).numpy()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    with simulated_int8(model, set()):
        base = _cosine_mean(model, inputs, reference)
    gains = {}
    for i, name in enumerate(linears):
        progress(f"layer {i + 1}/{len(linears)}: {name}")
        with simulated_int8(model, {name}):
            gains[name] = _cosine_mean(model, inputs, reference) - base
    chosen: list[str] = []
    reached, extra = base, 0
    for name in sorted(gains, key=gains.get, reverse=True):
        if reached >= target:
            break
        cost = linears[name].weight.numel() * 3  # fp32 instead of int8 weights
        if extra + cost > max_extra_bytes:
            break
        chosen.append(name)
        extra += cost
        with simulated_int8(model, set(chosen)):
            reached = _cosine_mean(model, inputs, reference)
    return chosen, {"calib_cosine_all_int8": base, "calib_cosine": reached, "target_cosine": target,
                    "float_layers_extra_bytes": extra, "calib_samples": len(reference),
                    "ranking": [[n, round(gains[n], 7)] for n in sorted(gains, key=gains.get, reverse=True)[:10]]}

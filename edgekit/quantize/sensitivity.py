"""Mixed precision: per-layer sensitivity, then the float layers that meet the accuracy budget.

1. **Sensitivity.** Each quantizable layer (``nn.Conv*``, ``nn.Linear``) is quantized *alone*
   (PT2E with a module-name filter: that layer's inputs, weights and output in int8, every other
   layer float) and the task metric and the output SQNR are measured on the eval split.
2. **Selection.** If the whole model in int8 already meets the budget (``max_accuracy_drop``
   points below fp32), nothing stays float. Otherwise layers are kept in float, most damaging
   first (accuracy drop alone, then lowest SQNR, then the cheapest to keep: fewest weights),
   re-measuring the whole model after each, until the budget is met. A pruning pass then tries
   to quantize each float layer again, most expensive first, and keeps the cheaper model
   whenever the budget still holds: the result is the float set with the smallest size cost
   that greedy search finds.
3. **Application** is each backend's own mechanism: a module-name node filter in PT2E's
   XNNPACKQuantizer (ExecuTorch); ``nodes_to_exclude`` in ONNX Runtime's quantizers (ONNX nodes are
   matched to layers by the exporter's name scopes); ``no_quantize`` regex scopes in
   ai-edge-quantizer's static int8 recipe (TFLite tensors carry the module path in their names).
   litert-torch's own PT2E path cannot do it: its full-integer converter quantizes every op
   whatever the annotations say (measured).

The analysis is a simulation in PyTorch with PT2E's reference int8 ops, using XNNPACK's
scheme (int8 symmetric per-channel weights, int8 affine per-tensor activations) for every
format; ONNX Runtime's CPU scheme (uint8 affine activations) has the same resolution. The
deployed artifact is then validated in its own runtime against the same budget, so a
simulation that flatters the backend is caught, not shipped.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from edgekit.quantize.backends import restricted_quantizer
from edgekit.quantize.numerics import sqnr_db

QUANTIZABLE = ("Conv1d", "Conv2d", "Conv3d", "Linear")

ProgressFn = Callable[[str], None]


@dataclass
class LayerSensitivity:
    name: str
    kind: str
    params: int  # weights and bias
    float_cost_bytes: int  # extra bytes when this layer stays float32 instead of int8
    metric: float  # task metric with only this layer in int8
    drop_points: float  # fp32 metric - metric, in points
    sqnr_db: float | None  # SQNR of the model output with only this layer in int8 (None = exact)
    precision: str = "int8"  # the decision: int8 or fp32


@dataclass
class MixedReport:
    metric_name: str
    budget_points: float
    fp32_metric: float
    int8_metric: float  # every layer in int8
    mixed_metric: float  # with float_layers kept in float
    float_layers: list[str]
    layers: list[LayerSensitivity] = field(default_factory=list)
    evaluations: int = 0
    simulation: str = ("PyTorch PT2E reference int8 (XNNPACK scheme: int8 symmetric per-channel weights, "
                       "int8 affine per-tensor activations)")

    @property
    def float_cost_bytes(self) -> int:
        return sum(s.float_cost_bytes for s in self.layers if s.name in self.float_layers)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "float_cost_bytes": self.float_cost_bytes}


def quantizable_layers(model: Any) -> list[tuple[str, Any]]:
    """(module path, module) of the layers a PT2E int8 quantizer annotates, in model order."""
    return [(n, m) for n, m in model.named_modules() if n and type(m).__name__ in QUANTIZABLE]


def check_layer_names(model: Any, names: tuple[str, ...]) -> None:
    """Refuse layer names that are not quantizable layers of ``model``, suggesting near misses."""
    import difflib

    from edgekit.errors import PlanError

    known = {n for n, _ in quantizable_layers(model)}
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = {n: difflib.get_close_matches(n, known, 3) for n in unknown}
        raise PlanError("unknown layer(s) for --keep-float: " + "; ".join(
            f"{n!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
            + f"; quantizable layers: {', '.join(sorted(known))}")


def xnnpack_config(per_channel: bool = True) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    return get_symmetric_quantization_config(is_per_channel=per_channel)


class _Simulator:
    """Quantize a dynamic-batch copy of the model with a given float set and measure it on eval."""

    def __init__(self, model: Any, example: tuple, calib: np.ndarray, ev_x: np.ndarray, ev_y: np.ndarray,
                 per_channel: bool, batch: int = 256):
        import torch

        from edgekit.export.trace import export_train_graph

        self.model = copy.deepcopy(model).eval()
        self.graph = export_train_graph(self.model, example)  # dynamic batch: calibrate/evaluate in chunks
        self.has_batch_norm = any("batch_norm" in str(n.target) for n in self.graph.graph.nodes)
        self.calib, self.ev_x, self.ev_y = calib, ev_x, ev_y
        self.per_channel, self.batch = per_channel, batch
        with torch.no_grad():
            self.reference = self._run(self.model)
        self.fp32_metric = self._metric(self.reference)
        self.evaluations = 0

    def _run(self, module: Any) -> np.ndarray:
        import torch

        outs = []
        with torch.no_grad():
            for i in range(0, len(self.ev_x), self.batch):
                out = module(torch.from_numpy(np.ascontiguousarray(self.ev_x[i:i + self.batch])))
                outs.append((out[0] if isinstance(out, (tuple, list)) else out).detach().numpy())
        return np.concatenate(outs)

    def _metric(self, out: np.ndarray) -> float:
        return float((out.reshape(len(out), -1).argmax(1) == self.ev_y).mean())

    def measure(self, float_layers: tuple[str, ...] = ()) -> tuple[float, float | None]:
        """(task metric, output SQNR in dB or None when exact) of the simulated int8 model. Quantizing
        one layer alone = every other quantizable layer float (activations and pooling around it
        follow the backend's fusion patterns, as in the full model)."""
        import torch
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer()
        if not self.has_batch_norm:  # same annotations; skips tracing 24 conv-bn pattern graphs per call
            quantizer.SUPPORTED_PATTERNS = [p for p in quantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]
        quantizer = restricted_quantizer(quantizer, xnnpack_config(self.per_channel), float_layers)
        prepared = prepare_pt2e(copy.deepcopy(self.graph), quantizer)
        move_exported_model_to_eval(prepared)
        with torch.no_grad():
            for i in range(0, len(self.calib), self.batch):
                prepared(torch.from_numpy(np.ascontiguousarray(self.calib[i:i + self.batch])))
        converted = convert_pt2e(prepared)
        move_exported_model_to_eval(converted)
        out = self._run(converted)
        self.evaluations += 1
        exact = np.array_equal(out, self.reference)
        return self._metric(out), None if exact else sqnr_db(self.reference, out)


def analyze(model: Any, example: tuple, calib: np.ndarray, ev_x: np.ndarray, ev_y: np.ndarray,
            budget_points: float, per_channel: bool = True, float_layers: tuple[str, ...] | None = None,
            progress: ProgressFn = lambda msg: None) -> MixedReport:
    """Measure each layer's sensitivity and choose the float layers (or check the given ones)."""
    from edgekit.errors import PlanError

    sim = _Simulator(model, example, calib, ev_x, ev_y, per_channel)
    layers = quantizable_layers(sim.model)
    if not layers:
        raise PlanError(f"--quant mixed: {type(model).__name__} has no Conv or Linear layer to quantize")
    check_layer_names(sim.model, float_layers or ())
    table = []
    for i, (name, module) in enumerate(layers, 1):
        progress(f"sensitivity {i}/{len(layers)}: {name}")
        metric, sqnr = sim.measure(tuple(n for n, _ in layers if n != name))
        params = sum(p.numel() for p in module.parameters(recurse=False))
        weight = module.weight.numel()
        table.append(LayerSensitivity(name, type(module).__name__, params, 3 * weight, metric,
                                      round(100 * (sim.fp32_metric - metric), 4), sqnr))
    progress("every layer in int8")
    int8_metric, _ = sim.measure()

    def drop(metric: float) -> float:
        return 100 * (sim.fp32_metric - metric)

    if float_layers is not None:  # the user's choice: measure it, do not search
        chosen = list(float_layers)
        mixed_metric = sim.measure(tuple(chosen))[0] if chosen else int8_metric
    elif drop(int8_metric) <= budget_points:
        chosen, mixed_metric = [], int8_metric
    else:
        order = sorted(table, key=lambda s: (-s.drop_points, s.sqnr_db if s.sqnr_db is not None else np.inf,
                                             s.float_cost_bytes))
        chosen, mixed_metric = [], int8_metric
        for s in order:
            chosen.append(s.name)
            progress(f"keeping {len(chosen)} layer(s) in float: {', '.join(chosen)}")
            mixed_metric = sim.measure(tuple(chosen))[0]
            if drop(mixed_metric) <= budget_points:
                break
        for s in sorted((s for s in table if s.name in chosen), key=lambda s: -s.float_cost_bytes):
            if len(chosen) == 1 or drop(mixed_metric) > budget_points:
                break
            trial = [n for n in chosen if n != s.name]
            progress(f"trying {s.name} in int8 again")
            metric = sim.measure(tuple(trial))[0]
            if drop(metric) <= budget_points:
                chosen, mixed_metric = trial, metric
    for s in table:
        s.precision = "fp32" if s.name in chosen else "int8"
    order_index = {n: i for i, (n, _) in enumerate(layers)}
    return MixedReport("accuracy", budget_points, sim.fp32_metric, int8_metric, mixed_metric,
                       sorted(chosen, key=order_index.__getitem__), table, sim.evaluations)

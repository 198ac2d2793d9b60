"""Pruning: ``edgekit build --prune KIND:RATIO``, then recovery by knowledge distillation from the unpruned model.

Three kinds, each with a different promise, measured in ``benchmarks/results/pruning.md``:

- ``structured:R`` removes whole channels / neurons (torch-pruning's dependency graph: residual additions, grouped
  and depthwise convolutions, batch norms and flattens are followed, so the network stays consistent) until a
  fraction ``R`` of the model's parameters is gone; ``structured:latency=R`` until the fp32 export's latency, measured
  on this host in the build's runtime, is down by ``R`` (a bisection over the channel ratio, 8 measurements). The network is physically smaller: every runtime runs it faster.
  Importance by weight magnitude (L2 of each channel's group) or Taylor (|weight x gradient| on train batches).
  The layer that produces the model's output keeps its width (its channels are the classes).
- ``unstructured:R`` zeroes the fraction ``R`` of each conv/linear layer's weights with the smallest magnitude
  (``torch.nn.utils.prune``, per layer: a global ranking empties whole layers whose weights are small by their
  scale, as it does every layer of MobileNetV2's last blocks at 80%). The tensors keep their shape: the runtimes edgekit targets run dense kernels on them,
  so latency does not move; what shrinks is the compressed size (a zip or an APK deflates the model file).
- ``2:4`` zeroes 2 of every 4 consecutive input-channel weights (the semi-structured pattern of sparse tensor cores),
  for every conv/linear whose input channels per group are a multiple of 4; the others stay dense and are listed.
  No CPU runtime here has a 2:4 kernel; it is offered so that the accuracy cost is known before a GPU path uses it.

Recovery: the pruned network is fine-tuned with the Hinton KD loss against the unpruned one (the distill trainer,
:func:`edgekit.distill.api.distill`), the best epoch chosen on the calib split; the masks of unstructured / 2:4
pruning stay applied while it trains (``torch.nn.utils.prune`` reparametrises the weight), so the zeros survive.
QAT after unstructured pruning would re-grow them, so the planner refuses that combination.

>>> spec = PruneSpec.parse("structured:0.5")
>>> (spec.kind, spec.ratio)
('structured', 0.5)
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.errors import EdgekitError, PlanError

KINDS = ("structured", "unstructured", "2:4")
IMPORTANCE = ("magnitude", "taylor")
CHANNEL_MULTIPLES = (16, 8, 4, 2, 1)
OVERSHOOT = 0.05  # structured: a channel multiple is kept when it removes at most this much more than asked


class PruneError(EdgekitError):
    """The model cannot be pruned as asked (a layer the pruner cannot follow, a layer that would lose every
    channel or weight)."""

    exit_code = 2


class PruneSpec(BaseModel):
    """What ``--prune`` asks for; recorded in the plan and the manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["structured", "unstructured", "2:4"]
    ratio: float = Field(gt=0, lt=1, description="structured: parameters (or latency) removed; unstructured: each "
                                                 "conv/linear layer's weights zeroed; 2:4: 0.5 of the layers' weights")
    target: Literal["parameters", "latency"] = Field(
        default="parameters", description="structured: what the ratio is of (latency: measured on this host, fp32, "
                                          "in the build's runtime)")
    importance: Literal["magnitude", "taylor"] = "magnitude"
    channel_multiple: int | None = Field(default=None, ge=1, description="structured: kept channels rounded down to a "
                                         "multiple of this (None: the first of 16, 8, 4, 2, 1 that reaches the target)")
    epochs: int = Field(default=20, ge=0, description="KD recovery epochs (0: none)")
    lr: float = Field(default=3e-3, gt=0, description="the distill trainer's default for classifiers")

    @classmethod
    def parse(cls, text: str, **settings: Any) -> PruneSpec:
        """``structured:0.5``, ``structured:latency=0.3``, ``unstructured:0.8`` or ``2:4``; a bad one is a PlanError
        naming the forms."""
        forms = ("structured:RATIO, structured:latency=RATIO, unstructured:RATIO or 2:4 (RATIO strictly between 0 "
                 "and 1, e.g. structured:0.5)")
        text = text.strip()
        if text == "2:4":
            return cls(kind="2:4", ratio=0.5, **settings)
        kind, _, value = text.partition(":")
        if kind == "structured" and value.startswith("latency="):
            settings = {**settings, "target": "latency"}
            value = value[len("latency="):]
        if kind not in ("structured", "unstructured") or not value:
            raise PlanError(f"--prune {text!r}: give {forms}")
        try:
            ratio = float(value)
        except ValueError:
            raise PlanError(f"--prune {text!r}: {value!r} is not a number; give {forms}") from None
        if not 0 < ratio < 1 or not math.isfinite(ratio):
            raise PlanError(f"--prune {text!r}: the ratio must be strictly between 0 and 1 (the fraction removed), "
                            f"not {value}")
        return cls(kind=kind, ratio=ratio, **settings)

    @classmethod
    def from_plan(cls, record: dict[str, Any]) -> PruneSpec:
        """The spec back from the plan's ``prune`` dict (its fields and the derived ``label``)."""
        return cls(**{k: v for k, v in record.items() if k != "label"})

    @property
    def label(self) -> str:
        if self.kind == "2:4":
            return "2:4"
        return f"{self.kind}:{'latency=' if self.target == 'latency' else ''}{self.ratio:g}"


def compressed_bytes(path: Path) -> int:
    """The file's size deflated at zip's default level (6): about what it takes in a zip, an APK or a .tar.gz."""
    z, n = zlib.compressobj(6), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            n += len(z.compress(chunk))
    return n + len(z.flush())


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero_count(model: Any) -> int:
    """Non-zero parameters (with pruning masks applied)."""
    import torch

    with torch.no_grad():
        return sum(int(torch.count_nonzero(t)) for n, t in _effective_tensors(model))


def _effective_tensors(model: Any) -> list[tuple[str, Any]]:
    out, seen = [], set()
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if id(p) in seen:  # a tied weight (an LM's embedding and output layer) counts once
                continue
            seen.add(id(p))
            if pname.endswith("_orig"):  # torch.nn.utils.prune: the masked weight is the attribute
                pname = pname[: -len("_orig")]
                p = getattr(m, pname)
            out.append((f"{mname}.{pname}" if mname else pname, p))
    return out


def _weighted_layers(model: Any) -> list[tuple[str, Any]]:
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


def _output_layer(model: Any, example: tuple[Any, ...]) -> Any:
    """The last conv/linear the forward pass runs: its output channels are the model's outputs (the classes)."""
    import torch

    order: list[Any] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for _, m in _weighted_layers(model)]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def prune(model: Any, example: tuple[Any, ...], spec: PruneSpec, gradients: Callable[[Any], None] | None = None,
          latency: Callable[[Any], float] | None = None) -> tuple[Any, dict[str, Any]]:
    """A pruned copy of ``model`` (``model`` is left as it is) and the record of what was removed.
    ``gradients(model)`` runs a backward pass on train data (Taylor importance needs it); ``latency(model)``
    measures a network's latency in ms (``structured:latency=R`` needs it). Unstructured and 2:4 pruning leave
    ``torch.nn.utils.prune`` masks in place (for recovery); :func:`finalize` makes them permanent."""
    model = copy.deepcopy(model).eval()
    before = parameter_count(model)
    reference = _shapes(model, example)
    if spec.kind == "structured":
        model, layers = _structured(model, example, spec, gradients, latency)
        _check_outputs(model, example, reference)
    elif spec.kind == "unstructured":
        layers = zero_unstructured(model, spec)
    else:
        layers = zero_two_four(model)
    record = {**spec.model_dump(), "label": spec.label, "parameters_before": before,
              "parameters_after": parameter_count(model), "nonzero_after": nonzero_count(model), **layers}
    return model, record


# -- structured ---------------------------------------------------------------------------------------------------

def _shapes(model: Any, example: tuple[Any, ...]) -> list[tuple[int, ...]]:
    import torch

    with torch.no_grad():
        out = model(*example)
    return [tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _check_outputs(model: Any, example: tuple[Any, ...], reference: list[tuple[int, ...]]) -> None:
    """Only the last conv/linear keeps its width: a model with another output head would change shape."""
    got = _shapes(model, example)
    if got != reference:
        raise PruneError(f"structured pruning changed the model's output shapes from {reference} to {got}: a layer "
                         "other than the last one produces an output, and it lost channels; prune unstructured, or "
                         "give the model one output layer")

# Layer types torch-pruning's dependency graph knows how to narrow (anything else holding parameters is refused)
def _known_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d,
            nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.PReLU, nn.Embedding)


def _check_structured(model: Any, output: Any) -> None:
    known = _known_types()
    for name, m in model.named_modules():
        own = [n for n, _ in m.named_parameters(recurse=False)]
        if own and not isinstance(m, known) and m is not output:
            raise PruneError(f"structured pruning cannot handle layer {name or '(the model itself)'!r} "
                             f"({type(m).__name__}): it holds its own parameters ({', '.join(own)}), whose channels "
                             "the dependency graph cannot follow, so it would keep its width while its neighbours "
                             "shrink; use --prune unstructured:RATIO or 2:4, or build it from standard layers")


def _pruner(model: Any, example: tuple[Any, ...], channel_ratio: float, importance: str, output: Any,
            multiple: int = 1) -> Any:
    import torch_pruning as tp

    imp = tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    return tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=channel_ratio,
                                ignored_layers=[output] if output is not None else [],
                                round_to=multiple if multiple > 1 else None)


def _narrowest(model: Any, example: tuple[Any, ...], output: Any) -> list[tuple[str, int]]:
    """(layer, output channels) of every layer the pruner would narrow."""
    pr = _pruner(model, example, 0.5, "magnitude", output)
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in pr.DG.get_all_groups(ignored_layers=pr.ignored_layers, root_module_types=pr.root_module_types):
        root = group[0].dep.target.module
        channels = pr.DG.get_out_channels(root)
        if channels:
            out.append((names.get(root, type(root).__name__), int(channels)))
    return out


def _structured(model: Any, example: tuple[Any, ...], spec: PruneSpec, gradients: Callable[[Any], None] | None,
                latency: Callable[[Any], float] | None) -> tuple[Any, dict[str, Any]]:
    """Bisect the per-layer channel ratio until the parameters (or the measured latency) removed reach
    ``spec.ratio``."""
    output = _output_layer(model, example)
    _check_structured(model, output)
    layers = _narrowest(model, example, output)
    if not layers:
        raise PruneError("structured pruning found no layer to narrow (only the output layer has channels)")
    measured: dict[int, float] = {}
    if spec.target == "latency":
        if latency is None:
            raise PruneError("structured:latency=RATIO needs a runtime to measure latency in")
        total = measured[id(model)] = latency(model)
        what = f"of the latency ({total:.3f} ms unpruned, measured)"

        def removed(m: Any) -> float:
            measured[id(m)] = latency(m)
            return 1 - measured[id(m)] / total
    else:
        total = parameter_count(model)
        what = "of the parameters"

        def removed(m: Any) -> float:
            return 1 - parameter_count(m) / total
    # torch-pruning keeps int(channels * (1 - ratio)) channels of each layer and silently skips a layer that would
    # keep none: the narrowest layer bounds the ratio
    name, narrow = min(layers, key=lambda nc: nc[1])
    most = 0.0

    def attempt(c: float, multiple: int) -> Any:
        m = copy.deepcopy(model)
        if spec.importance == "taylor":
            if gradients is None:
                raise PruneError("Taylor importance needs train data for its gradients")
            gradients(m)
        pr = _pruner(m, example, c, spec.importance, _output_layer(m, example), multiple)
        pr.step()
        m.zero_grad(set_to_none=True)
        return m

    # Kept channels are rounded down to a multiple of 16 where that lands within OVERSHOOT of the target, else 8, 4,
    # 2, 1: odd widths fall off the runtimes' vector blocks (ONNX Runtime's NCHWc is 16 wide on AVX-512; MobileNetV2
    # at 50% of its parameters ran 1.26x SLOWER than dense in ORT with odd widths, 0.48x with multiples of 16).
    # A layer whose kept width rounds down to 0 is silently left whole by torch-pruning, so with multiple k the
    # bisection stays below 1 - k / (the narrowest layer of at least 2k channels): there every layer of 2k or more
    # keeps at least k channels, narrower ones keep their width, and the fraction removed grows with the ratio.
    steps = 8 if spec.target == "latency" else 14  # a measurement is noisy and slow: fewer, coarser steps
    multiples = (spec.channel_multiple,) if spec.channel_multiple else \
        (16, 1) if spec.target == "latency" else CHANNEL_MULTIPLES
    for multiple in multiples:
        wide = [c for _, c in layers if c >= 2 * multiple]
        if multiple > 1 and not wide:
            continue
        ceiling = 1 - multiple / min(wide) if multiple > 1 else 1 - 1 / narrow
        top = attempt(ceiling, multiple)
        most = removed(top)
        if most < spec.ratio:
            continue
        lo, hi, best, got = 0.0, ceiling, top, most
        for _ in range(steps):
            mid = (lo + hi) / 2
            m = attempt(mid, multiple)
            if (r := removed(m)) >= spec.ratio:
                hi, best, got = mid, m, r
            else:
                lo = mid
        if got <= spec.ratio + OVERSHOOT or multiple == multiples[-1]:
            break
    else:
        raise PruneError(f"structured pruning to remove {spec.ratio:.0%} {what} would remove every channel "
                         f"of layer {name!r} ({narrow} channels): the most it can remove while every layer keeps a "
                         f"channel is {most:.1%} (the output layer keeps its width)")
    after = dict(_weighted_layers(best))
    extra = {"latency_ms_before": round(total, 4), "latency_ms_after": round(measured[id(best)], 4)} \
        if spec.target == "latency" else {}
    return best.eval(), {"channel_ratio": round(hi, 6), "channel_multiple": multiple, **extra,
                         "layers": {n: {"channels_before": int(m.weight.shape[0]),
                                        "channels_after": int(after[n].weight.shape[0])}
                                    for n, m in _weighted_layers(model)}}


# -- unstructured and 2:4 -----------------------------------------------------------------------------------------

def zero_unstructured(model: Any, spec: PruneSpec) -> dict[str, Any]:
    import torch
    from torch.nn.utils import prune as tprune

    layers = _weighted_layers(model)
    if not layers:
        raise PruneError("unstructured pruning found no conv or linear layer")
    for _, m in layers:  # per layer: a global ranking empties whole layers whose weights are small by scale
        tprune.l1_unstructured(m, "weight", amount=spec.ratio)
    empty = [n for n, m in layers if not torch.count_nonzero(m.weight)]
    if empty:
        raise PruneError(f"unstructured pruning of {spec.ratio:.0%} of the weights would remove every weight of layer "
                         f"{empty[0]!r}" + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "")
                         + "; use a smaller ratio")
    return {"layers": {n: {"sparsity": round(1 - int(torch.count_nonzero(m.weight)) / m.weight.numel(), 4)}
                       for n, m in layers}}


def two_four_mask(weight: Any) -> Any:
    """Keep the 2 largest of every 4 consecutive input channels (per output channel and kernel position)."""
    w = weight.detach()
    moved = w.movedim(1, -1) if w.dim() > 2 else w  # [out, (k...), in]
    groups = moved.abs().reshape(-1, 4)
    keep = groups.topk(2, dim=1).indices
    mask = groups.new_zeros(groups.shape).scatter_(1, keep, 1.0).reshape(moved.shape)
    return mask.movedim(-1, 1) if w.dim() > 2 else mask


def zero_two_four(model: Any) -> dict[str, Any]:
    from torch.nn.utils import prune as tprune

    done, dense = [], []
    for name, m in _weighted_layers(model):
        if m.weight.shape[1] % 4:
            dense.append(f"{name} ({m.weight.shape[1]} input channels per group)")
            continue
        tprune.custom_from_mask(m, "weight", two_four_mask(m.weight))
        done.append(name)
    if not done:
        raise PruneError("2:4 sparsity applies to conv/linear layers whose input channels per group are a multiple of "
                         f"4; this model has none ({'; '.join(dense)})")
    return {"layers_2of4": done, "layers_dense": dense}


def finalize(model: Any) -> Any:
    """Make unstructured / 2:4 masks permanent (plain weights with zeros in them), as export expects."""
    from torch.nn.utils import prune as tprune

    for _, m in _weighted_layers(model):
        if tprune.is_pruned(m) and hasattr(m, "weight_orig"):
            tprune.remove(m, "weight")
    return model


# -- the build's prune stage ---------------------------------------------------------------------------------------

def prune_for_build(model: Any, example: tuple[Any, ...], splits: dict[str, Any], spec: PruneSpec,
                    temperature: float, alpha: float, seed: int, say: Callable[[str], None],
                    latency: Callable[[Any], float] | None = None) -> tuple[Any, dict[str, Any]]:
    """The build's prune stage for a classifier: prune ``model``, recover with ``spec.epochs`` of Hinton KD from
    ``model`` itself (the best epoch on calib), make the masks permanent. Returns the pruned network and the
    manifest's record (parameters, non-zero weights, eval accuracy dense / pruned / recovered)."""
    import torch

    from edgekit.distill.api import distill
    from edgekit.distill.trainer import evaluate_classifier

    train, ev = splits["train"], splits["eval"]
    xev, yev = torch.from_numpy(ev.x), torch.from_numpy(ev.y)

    def gradients(m: Any) -> None:  # Taylor importance: |w * dL/dw| on up to 256 labelled train samples
        labelled = train.y != -100
        x, y = torch.from_numpy(train.x[labelled][:256]), torch.from_numpy(train.y[labelled][:256])
        m.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(x), y).backward()

    dense = evaluate_classifier(model, xev, yev)["eval_accuracy"]
    say(f"{spec.label} ({spec.importance} importance)")
    pruned, record = prune(model, example, spec, gradients, latency)
    record["accuracy_dense"] = dense
    record["accuracy_pruned"] = evaluate_classifier(pruned, xev, yev)["eval_accuracy"]
    record["recovery"] = None
    if spec.epochs:
        def progress(p: Any) -> None:
            if p.event == "epoch":
                acc = p.metrics.get("eval_accuracy")
                say(f"KD recovery epoch {p.epoch}/{p.epochs}, loss {p.loss:.4f}"
                    + (f", calib accuracy {acc:.2%}" if acc is not None else ""))

        teacher = copy.deepcopy(model).eval()
        result = distill(pruned.train(), teacher, splits, method="hinton", temperature=temperature, alpha=alpha,
                         epochs=spec.epochs, lr=spec.lr, seed=seed, cache_teacher=True, device="cpu",
                         select_split="calib", on_progress=progress)
        m = result.metrics
        record["recovery"] = {"method": "hinton-kd", "teacher": "the unpruned model", "temperature": temperature,
                              "alpha": alpha, "epochs": spec.epochs, "lr": spec.lr, "best_epoch": m["best_epoch"],
                              "best_epoch_chosen_on": "calib", "seconds": m["seconds"]}
    finalize(pruned.eval())
    record["accuracy_after"] = evaluate_classifier(pruned, xev, yev)["eval_accuracy"]
    record["nonzero_after"] = nonzero_count(pruned)
    record["accuracy_measured_on"] = "eval"
    return pruned, record

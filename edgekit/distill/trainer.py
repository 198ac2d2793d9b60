"""The training loop distillation runs on: seeded, evaluated every epoch, resumable, data-parallel.

- AdamW with a per-step cosine (or constant) learning-rate schedule; epochs, batch size.
- Determinism: the shuffling order and the global torch RNG (dropout) of every epoch derive from
  ``(seed, epoch)``, so two runs with one seed are identical on CPU and a resumed run replays the
  same batches without saving RNG state.
- Evaluation on the eval split after every epoch (accuracy and cross-entropy of the student);
  the best epoch is the highest accuracy, ties broken by the lower eval loss; early stopping after
  ``patience`` epochs without a better one; the best weights are loaded at the end.
- Checkpoints: one safetensors file per stage, rewritten atomically after every epoch: the weights
  of every trained module, the optimizer's tensors, the best weights so far; the epoch, history,
  optimizer hyper-parameters, scheduler state, settings and a model fingerprint (hash of the
  parameter names, shapes and dtypes) as JSON in the file's metadata. Resuming checks the
  fingerprint and the settings and refuses a checkpoint of another model or another recipe.
- Data parallel through torch.distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) every process
  draws the same global permutation, takes its contiguous share of each global batch, and the
  gradients are all-reduced weighted by each share's size. With the same seed and global batch
  the averaged gradient equals the single-process one up to float summation order, so a 2-process
  run matches a 1-process run within float tolerance (models with dropout or batch-norm statistics
  in the student differ: those see per-process batches). gloo on CPU, nccl on CUDA.
  Rank 0 writes files.

>>> # result = fit({"student": model}, step_loss, (x, y), TrainConfig(epochs=10), evaluate=(x_ev, y_ev))
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from edgekit.distill import DistillError, DistillWarning
from edgekit.fsutil import write_atomic

CHECKPOINT_FORMAT = 1
StepLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, y, sample indices) -> loss


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and loop settings. ``patience`` None = no early stopping."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    schedule: Literal["cosine", "constant"] = "cosine"
    patience: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise DistillError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise DistillError(f"learning rate must be > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise DistillError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if self.schedule not in ("cosine", "constant"):
            raise DistillError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise DistillError(f"patience must be an integer >= 1 or None, got {self.patience!r}")

    def recipe(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint (device and patience may change)."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "patience")}


@dataclass(frozen=True)
class Progress:
    """What the loop reports: after every optimizer step (``event="step"``) and after every epoch
    (``event="epoch"``, with ``metrics``: train_loss, lr and, when evaluated, eval_accuracy, eval_loss)."""

    stage: str
    event: Literal["step", "epoch"]
    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    loss: float  # mean training loss of the epoch so far
    metrics: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one entry per epoch: epoch, train_loss, lr [, eval_accuracy, eval_loss]
    best_epoch: int  # the epoch whose weights the modules hold now (the last one without evaluation)
    stopped_early: bool
    resumed_from: int  # epochs already done in the checkpoint resumed from (0 = fresh start)


@dataclass(frozen=True)
class World:
    """This process's place in a torch.distributed job (rank 0 of 1 without one)."""

    rank: int = 0
    size: int = 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        if self.size > 1:
            import torch.distributed as dist

            for t in tensors:
                dist.broadcast(t, src=0)


def current_world() -> World:
    """Join the torch.distributed job ``torchrun`` describes in the environment (once), or a world of 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        atexit.register(dist.destroy_process_group)
    return World(dist.get_rank(), dist.get_world_size())


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: this process's CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DistillError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DistillError(f"device {device!r} asked for, but this torch sees no CUDA device; use --device cpu")
    return dev


def ensure_eval(teacher: nn.Module) -> None:
    """A teacher must run in eval mode (batch norm on running stats, no dropout); switch it, say so once."""
    if any(m.training for m in teacher.modules()):
        warnings.warn(DistillWarning(f"the teacher ({type(teacher).__name__}) was in training mode; switched it to "
                                     "eval mode (batch norm uses running statistics, dropout is off)"), stacklevel=3)
        teacher.eval()


def fingerprint(modules: dict[str, nn.Module]) -> str:
    """sha256 of every state entry's name, shape and dtype: same architecture <=> same fingerprint."""
    return hashlib.sha256(json.dumps(_layout(modules)).encode()).hexdigest()[:16]


def _layout(modules: dict[str, nn.Module]) -> list[list[Any]]:
    return [[f"{key}.{name}", list(t.shape), str(t.dtype)] for key, m in modules.items()
            for name, t in m.state_dict().items()]


def fit(modules: dict[str, nn.Module], step_loss: StepLoss, train: tuple[torch.Tensor, torch.Tensor],
        config: TrainConfig, *, params: list[nn.Parameter] | None = None,
        evaluate: tuple[torch.Tensor, torch.Tensor] | Callable[[nn.Module], dict[str, float]] | None = None,
        stage: str = "train",
        on_progress: ProgressFn | None = None, checkpoint: Path | None = None, resume: bool = False,
        recipe: dict[str, Any] | None = None) -> FitResult:
    """Train ``params`` (default: every parameter of ``modules``) to minimise ``step_loss`` over ``train``.

    ``modules["student"]`` is the model evaluated on ``evaluate`` (x, y) after every epoch (or by
    ``evaluate(student)``, a callable returning metrics whose ``eval_score`` is maximised); all of
    ``modules`` (e.g. hint regressors beside it) are checkpointed and restored together. ``step_loss(x, y,
    index)`` gets a batch on the training device and the batch's sample indices (for cached targets).
    ``recipe``: extra JSON settings (loss, method) that must match to resume from ``checkpoint``.
    """
    world = current_world()
    device = resolve_device(config.device)
    for m in modules.values():
        m.to(device)
    params = params if params is not None else [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    x, y = train
    n = len(x)
    steps = math.ceil(n / config.batch_size)
    total_steps = steps * config.epochs
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    cosine = config.schedule == "cosine"
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)) if cosine else 1.0)
    signature = {"format": CHECKPOINT_FORMAT, "stage": stage, "fingerprint": fingerprint(modules),
                 "config": config.recipe(), "recipe": recipe or {}, "n_train": n}
    state = {"epoch": 0, "history": [], "best_epoch": 0, "best_key": None, "stopped_early": False}
    best: dict[str, torch.Tensor] | None = None
    if resume and checkpoint is not None and checkpoint.is_file():
        state, best = _load_checkpoint(checkpoint, modules, opt, sched, signature)
    world.broadcast([t for m in modules.values() for t in m.state_dict().values()])
    resumed_from = state["epoch"]

    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if state["stopped_early"]:
            break
        for m in modules.values():
            m.train()
        epoch_seed = (config.seed * 1_000_003 + epoch) % (2 ** 63)
        torch.manual_seed(epoch_seed)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed))
        loss_sum, seen = 0.0, 0
        for step, batch in enumerate(order.split(config.batch_size), start=1):
            local = batch.tensor_split(world.size)[world.rank]
            opt.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=device)
            if len(local):
                loss = step_loss(x[local].to(device), y[local].to(device), local)
                loss.backward()
            global_loss = _sync_gradients(params, loss.detach(), len(local) / len(batch), world)
            if not math.isfinite(global_loss):
                raise DistillError(f"{stage}: training loss became {global_loss} in epoch {epoch}; "
                                   "lower the learning rate or check the data")
            opt.step()
            sched.step()
            loss_sum, seen = loss_sum + global_loss * len(batch), seen + len(batch)
            if on_progress:
                on_progress(Progress(stage, "step", epoch, config.epochs, step, steps, loss_sum / seen))
        record = {"epoch": epoch, "train_loss": loss_sum / seen, "lr": opt.param_groups[0]["lr"]}
        key: tuple[float, float] | None = None
        if callable(evaluate):  # a task's own measure: its "eval_score" is maximised
            record.update(evaluate(modules["student"]))
            key = (record["eval_score"],)
        elif evaluate is not None:
            record.update(evaluate_classifier(modules["student"], *evaluate, device, world))
            key = (record["eval_accuracy"], -record["eval_loss"])
        state["history"].append(record)
        if key is None or state["best_key"] is None or key > tuple(state["best_key"]):
            state["best_epoch"], state["best_key"] = epoch, key
            best = {f"{k}.{name}": t.detach().clone() for k, m in modules.items() for name, t in m.state_dict().items()}
        elif config.patience is not None and epoch - state["best_epoch"] >= config.patience:
            state["stopped_early"] = True
        state["epoch"] = epoch
        if checkpoint is not None and world.rank == 0:
            _save_checkpoint(checkpoint, modules, opt, sched, signature, state, best)
        if on_progress:
            on_progress(Progress(stage, "epoch", epoch, config.epochs, steps, steps, record["train_loss"],
                                 {k: v for k, v in record.items() if k != "epoch"}))
    if best is not None:
        _load_prefixed(modules, best)
    for m in modules.values():
        m.eval()
    return FitResult(state["history"], state["best_epoch"], state["stopped_early"], resumed_from)


def _sync_gradients(params: list[nn.Parameter], loss: torch.Tensor, share: float, world: World) -> float:
    """Make every process hold the global-batch gradient: each local mean-loss gradient weighted by its
    share of the batch, summed over processes. Missing gradients count as zeros. Returns the global loss."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if world.size == 1:
        for p, g in zip(params, grads):
            p.grad = g
        return loss.item()
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1)]) * share
    world.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return flat[-1].item()


@torch.no_grad()
def evaluate_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str = "cpu",
                        world: World = World(), batch_size: int = 1024) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y); sharded over the processes of ``world``."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, summed CE, count
    idx = torch.arange(world.rank, len(x), world.size)
    for chunk in idx.split(batch_size):
        logits = model(x[chunk].to(device))
        target = y[chunk].to(device)
        totals += torch.stack([(logits.argmax(-1) == target).sum().double(),
                               nn.functional.cross_entropy(logits, target, reduction="sum").double(),
                               torch.tensor(len(chunk), dtype=torch.float64, device=device)])
    world.all_reduce(totals)
    model.train(was_training)
    correct, ce, count = totals.tolist()
    return {"eval_accuracy": correct / count, "eval_loss": ce / count}


def _save_checkpoint(path: Path, modules: dict[str, nn.Module], opt: Any, sched: Any, signature: dict[str, Any],
                     state: dict[str, Any], best: dict[str, torch.Tensor] | None) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}.{name}": t for k, m in modules.items() for name, t in m.state_dict().items()}
    if best is not None:
        tensors.update({f"best.{name}": t for name, t in best.items()})
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {**signature, "state": state, "optimizer_groups": opt_state["param_groups"], "optimizer_scalars": scalars,
            "scheduler": sched.state_dict(), "layout": _layout(modules)}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"edgekit": json.dumps(meta)}))


def _load_checkpoint(path: Path, modules: dict[str, nn.Module], opt: Any, sched: Any,
                     signature: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["edgekit"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (OSError, KeyError, ValueError, SafetensorError) as e:
        raise DistillError(f"{path} is not an edgekit distillation checkpoint ({type(e).__name__}: {e}); "
                           "delete it or start without --resume") from None
    if meta.get("fingerprint") != signature["fingerprint"]:
        raise DistillError(f"refusing to resume from {path}: it was saved for another model "
                           f"({_layout_difference(meta.get('layout', []), _layout(modules))}); "
                           "start without --resume or write to another --out")
    for what in ("format", "stage", "config", "recipe", "n_train"):
        if meta.get(what) != json.loads(json.dumps(signature[what])):
            raise DistillError(f"refusing to resume from {path}: its {what} was {meta.get(what)!r}, now "
                               f"{signature[what]!r}; resume with the same settings or start without --resume")
    _load_prefixed(modules, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[str, Any] = {"state": {}, "param_groups": meta["optimizer_groups"]}
    for group in opt_state["param_groups"]:
        group["betas"] = tuple(group["betas"])
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, idx, key = k.split(".", 2)
            opt_state["state"].setdefault(int(idx), {})[key] = v
    for idx, entry in meta["optimizer_scalars"].items():
        opt_state["state"].setdefault(int(idx), {}).update(entry)
    opt.load_state_dict(opt_state)
    sched.load_state_dict(meta["scheduler"])
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return meta["state"], best


def _load_prefixed(modules: dict[str, nn.Module], flat: dict[str, torch.Tensor]) -> None:
    for key, m in modules.items():
        prefix = f"{key}."
        m.load_state_dict({k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}, strict=True)


def _layout_difference(saved: list[list[Any]], current: list[list[Any]]) -> str:
    """The first few differences between two layouts, in words."""
    old, new = {n: s for n, s, _ in saved}, {n: s for n, s, _ in current}
    diffs = [f"{n} has shape {old[n]} there, {new[n]} here" for n in new if n in old and old[n] != new[n]]
    diffs += [f"{n} only here" for n in new if n not in old] + [f"{n} only there" for n in old if n not in new]
    return "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "") if diffs else "dtypes differ"

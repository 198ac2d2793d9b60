"""Token-level distillation of a language model: Hinton KD on the teacher's next-token distributions.

Every position of every training window is a sample of the loss (:class:`edgekit.distill.losses.HintonKD`
per token): ``alpha * T^2 * KL(teacher || student)`` at temperature ``T`` plus ``(1 - alpha)`` times the
cross-entropy with the next token. The teacher runs once over the train split before training, and only
its ``top_k`` largest logits per token are kept (:func:`teacher_top_k`), with the log of its normaliser at
the temperature: a 49k-token vocabulary in fp32 is 196 KB per token, so a corpus of a million tokens would
need 196 GB, where the top 64 in fp16 with int32 indices take 388 bytes per token. The loss
(:func:`edgekit.distill.losses.soft_kl_topk`) compares the teacher's exact probabilities of its top ``k``
tokens and of "any other token" with the student's: the tail's total mass is kept, only how it spreads over
the tail is lost. The share of the teacher's probability in its top ``k`` is measured and reported. The
arrays are cached on disk (``$EDGEKIT_CACHE/lm-teacher-top-k``), keyed by the teacher's weights, the
windows, ``k`` and the temperature, so a second build does not run the teacher again.

The best epoch is chosen by perplexity on the ``calib`` split; perplexities are reported on ``eval``.
``edgekit build`` runs this as a language model's distill stage (:func:`distill_for_build`);
examples/tiny_lm/train.py and benchmarks/lm_kd.py train with :func:`train` too.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.distill import DistillError

DEFAULT_TOP_K = 64
CACHE_FORMAT = 1


def next_token_loss(model: Any, windows: Any) -> Any:
    """Mean cross-entropy of the next token over every position of ``windows [B, S + 1]``."""
    from torch.nn import functional as F

    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def perplexity(model: Any, windows: np.ndarray, batch: int = 4) -> float:
    """exp(mean next-token cross-entropy, in float64) over every predicted token of ``windows [N, S + 1]``."""
    return math.exp(float(window_nll(model, windows, batch).mean()))  # every window predicts S tokens


def window_nll(model: Any, windows: np.ndarray, batch: int = 4) -> np.ndarray:
    """Each window's mean next-token cross-entropy (float64) over its S predicted tokens, ``windows [N, S + 1]``."""
    import torch
    from torch.nn import functional as F

    was = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            w = torch.from_numpy(np.ascontiguousarray(windows[i:i + batch]))
            logits = model(w[:, :-1]).double()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="none")
            parts.append(nll.reshape(len(w), -1).mean(1).numpy())
    model.train(was)
    return np.concatenate(parts)


def _fingerprint(teacher: Any, windows: np.ndarray, k: int, temperature: float) -> str:
    h = hashlib.sha256(f"top-k v{CACHE_FORMAT} k={k} T={temperature!r} windows={windows.shape}".encode())
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    h.update(np.ascontiguousarray(windows, np.int64).tobytes())
    return h.hexdigest()[:24]


def teacher_top_k(teacher: Any, windows: np.ndarray, k: int = DEFAULT_TOP_K, temperature: float = 2.0,
                  batch: int = 4, say: Callable[[str], None] = lambda _: None,
                  cache: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The teacher's ``k`` largest next-token logits at every position of ``windows [N, S + 1]`` (it reads
    ``[:, :-1]``): values ``float16 [N, S, k]``, vocabulary indices ``int32 [N, S, k]`` and
    ``logsumexp(logits / temperature)`` over the whole vocabulary, ``float32 [N, S]``. Read from the disk cache
    when this teacher, these windows, ``k`` and ``temperature`` were computed before."""
    import torch

    from edgekit.fsutil import cache_dir, write_atomic

    vocab = teacher.config.vocab_size if hasattr(teacher, "config") else None
    if vocab is not None and not 1 <= k <= vocab:
        raise DistillError(f"[distill] top_k = {k}: must be between 1 and the teacher's vocabulary ({vocab})")
    path = cache_dir() / "lm-teacher-top-k" / f"{_fingerprint(teacher, windows, k, temperature)}.npz"
    if cache and path.is_file():
        try:
            with np.load(path) as z:
                say(f"teacher's top-{k} logits from the cache ({path})")
                return z["values"], z["indices"], z["log_norm"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is recomputed and replaced
    n, s = windows.shape[0], windows.shape[1] - 1
    values, indices = np.empty((n, s, k), np.float16), np.empty((n, s, k), np.int32)
    log_norm = np.empty((n, s), np.float32)
    was = teacher.training
    teacher.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, batch):
            w = torch.from_numpy(np.ascontiguousarray(windows[i:i + batch, :-1]))
            logits = teacher(w)
            top = torch.topk(logits, k, dim=-1)
            values[i:i + len(w)], indices[i:i + len(w)] = top.values.half().numpy(), top.indices.int().numpy()
            # normalised with the fp16-rounded top values in the sum, so the k probabilities never exceed 1
            rounded = logits.scatter(-1, top.indices, top.values.half().float())
            log_norm[i:i + len(w)] = torch.logsumexp(rounded.double() / temperature, -1).float().numpy()
            if time.perf_counter() - t0 > 10 and (i // batch) % 50 == 0:
                say(f"teacher's top-{k} logits: {i + len(w)} of {n} windows")
    teacher.train(was)
    if not np.isfinite(values).all():
        raise DistillError("the teacher's logits overflow float16 (|logit| > 65504) or are not finite; it cannot "
                           "be distilled from as it is")
    if cache:
        write_atomic(path, lambda tmp: np.savez(open(tmp, "wb"), values=values, indices=indices, log_norm=log_norm))
    return values, indices, log_norm


def top_k_mass(values: np.ndarray, log_norm: np.ndarray, temperature: float) -> float:
    """Mean share of the teacher's probability (at ``temperature``) that its top ``k`` tokens hold."""
    return float(np.exp(values.astype(np.float64) / temperature - log_norm[..., None]).sum(-1).mean())


def train(model: Any, splits: dict[str, np.ndarray], *, epochs: int, lr: float, batch_size: int, seed: int,
          weight_decay: float = 0.1, teacher: Any = None, temperature: float = 2.0, alpha: float = 0.5,
          top_k: int | None = DEFAULT_TOP_K, say: Callable[[str], None] = print,
          cache: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` on ``splits["train"]`` windows ``[N, S + 1]`` (AdamW + cosine, edgekit's training loop),
    keep the best epoch by ``calib`` perplexity, and report ``eval`` perplexity. With ``teacher``: token-level
    Hinton KD against its top-``top_k`` logits (``top_k=None``: its full logits, computed on every batch)."""
    import torch

    from edgekit.distill.losses import HintonKD, TopKLogits
    from edgekit.distill.trainer import TrainConfig, fit

    x = torch.from_numpy(np.ascontiguousarray(splits["train"]))
    kd = HintonKD(temperature, alpha) if teacher is not None else None
    cached = None
    record: dict[str, Any] = {}
    if teacher is not None:
        teacher.eval()
        if top_k is not None:
            cached = teacher_top_k(teacher, splits["train"], top_k, temperature, say=say, cache=cache)
            record["teacher_top_k_mass"] = top_k_mass(cached[0], cached[2], temperature)

    def step(xb: Any, _: Any, index: Any) -> Any:
        if kd is None:
            return next_token_loss(model, xb)
        if cached is not None:
            rows = index.numpy()
            target = TopKLogits(torch.from_numpy(cached[0][rows]), torch.from_numpy(cached[1][rows]),
                                torch.from_numpy(cached[2][rows]), temperature)
        else:
            with torch.no_grad():
                target = teacher(xb[:, :-1])
        return kd(model(xb[:, :-1]), target, xb[:, 1:])

    def on_calib(m: Any) -> dict[str, float]:
        ppl = perplexity(m, splits["calib"])
        return {"eval_score": -ppl, "calib_perplexity": ppl}

    def progress(p: Any) -> None:
        if p.event == "epoch":
            say(f"epoch {p.epoch}/{p.epochs}, train loss {p.loss:.3f}, calib perplexity "
                f"{p.metrics['calib_perplexity']:.2f}")

    t0 = time.perf_counter()
    result = fit({"student": model}, step, (x, torch.arange(len(x))),
                 TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                             device="cpu"),
                 evaluate=on_calib, stage="train", on_progress=progress)
    model.eval()
    record.update(best_epoch=result.best_epoch, best_epoch_chosen_on="calib", epochs=epochs,
                  eval_perplexity=perplexity(model, splits["eval"]),
                  parameters=sum(p.numel() for p in model.parameters()), seconds=round(time.perf_counter() - t0, 1))
    return model, record


def fresh_decoder(model: Any, seed: int) -> Any:
    """An untrained decoder of ``model``'s configuration, initialised under ``seed``."""
    import torch

    from edgekit.lm.model import Decoder

    torch.manual_seed(seed)
    return Decoder(model.config)


def distill_for_build(project: Any, splits: dict[str, Any], model: Any,
                      say: Callable[[str], None]) -> tuple[Any, Any, dict[str, Any]]:
    """A language model's distill stage: a student (``[distill] student``'s entry, or the ``[model]``'s
    architecture re-initialised) trained with token-level KD from ``[teacher]`` on the train windows, the best
    epoch chosen on calib. Returns the student, the teacher and the manifest's record: teacher, the ``[model]``
    as loaded and the distilled student, each by eval perplexity."""
    from edgekit.distill.spec import DistillSpec
    from edgekit.lm.model import as_decoder
    from edgekit.project import call_entry, load_model

    from edgekit.distill.project import check_task

    settings = project.distill or DistillSpec(temperature=2.0, alpha=0.5)
    settings.check()
    check_task(project, settings)
    say(f"loading the teacher: {project.teacher.source}")
    teacher = load_model(project, project.teacher, "teacher")
    if teacher.config.vocab_size != model.config.vocab_size:
        raise DistillError(f"the teacher's vocabulary ({teacher.config.vocab_size}) is not the student's "
                           f"({model.config.vocab_size}); token-level KD needs the same tokenizer")
    if settings.student is not None:
        import torch

        torch.manual_seed(project.seed)
        student = as_decoder(call_entry(project, settings.student, "distill student"),
                             f"distill student entry {settings.student!r}")
    else:
        student = fresh_decoder(model, project.seed)
    windows = {name: splits[name].x for name in ("train", "calib", "eval")}
    say(f"perplexity on eval of the teacher and of the [model] ({len(windows['eval'])} windows)")
    teacher_ppl, original_ppl = perplexity(teacher, windows["eval"]), perplexity(model, windows["eval"])
    top_k = settings.top_k
    student, rep = train(student, windows, epochs=settings.epochs, lr=settings.learning_rate,
                         batch_size=settings.batch_size, weight_decay=settings.weight_decay, seed=project.seed,
                         teacher=teacher, temperature=settings.temperature, alpha=settings.alpha, top_k=top_k,
                         say=say)
    record = {
        "method": "hinton", "task": "language-model", "loss": {"name": "hinton", "kwargs": {
            "temperature": settings.temperature, "alpha": settings.alpha}},
        "temperature": settings.temperature, "alpha": settings.alpha, "top_k": top_k,
        "teacher_top_k_mass": rep.get("teacher_top_k_mass"), "epochs": settings.epochs,
        "epochs_run": settings.epochs, "best_epoch": rep["best_epoch"], "best_epoch_chosen_on": "calib",
        "measured_on": "eval", "teacher_entry": project.teacher.source,
        "student_entry": settings.student or f"{project.model.source}, re-initialised",
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()), "student_parameters": rep["parameters"],
        "teacher_perplexity": teacher_ppl, "original_student_perplexity": original_ppl,
        "student_perplexity": rep["eval_perplexity"], "lr": settings.learning_rate, "seed": project.seed,
        "seconds": rep["seconds"],
    }
    return student, teacher, record


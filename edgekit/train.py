"""One small training loop, shared by QAT fine-tuning and quantization-aware distillation.

The loss is a hook: ``loss_fn(outputs, labels, inputs) -> scalar``. Cross-entropy is the
default; a KD loss (:func:`edgekit.distill.losses.kd_loss_fn`) closes over a teacher and calls it
on ``inputs``, so QAT composes with distillation without another loop.

>>> # model = fine_tune(model, x, y, epochs=2, loss_fn=cross_entropy)
>>> # exporter.export(..., quant=Int8QAT(), fine_tune=pt2e_qat_trainer(Int8QAT(), x, y, seed=0))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

LossFn = Callable[[Any, Any, Any], Any]
ProgressFn = Callable[[int, int, float], None]  # (epoch, epochs, mean loss of that epoch)


def cross_entropy(outputs: Any, labels: Any, inputs: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(outputs, labels)


def fine_tune(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-4, batch_size: int = 32,
              seed: int = 0, loss_fn: LossFn = cross_entropy, on_epoch: ProgressFn | None = None,
              train_mode: Callable[[Any], Any] | None = None, eval_mode: Callable[[Any], Any] | None = None) -> Any:
    """Adam fine-tuning over shuffled mini-batches; deterministic for a seed.

    ``train_mode`` / ``eval_mode`` switch the model (exported graphs need torchao's
    move_exported_model_to_train/eval so batch norm and dropout change behaviour)."""
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.array(x, order="C")), torch.from_numpy(np.asarray(y))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    (train_mode or (lambda m: m.train()))(model)
    for epoch in range(epochs):
        losses = []
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx], xt[idx])
            if not torch.isfinite(loss):
                from edgekit.errors import ValidationFailed

                raise ValidationFailed(f"training loss became {loss.item()} in epoch {epoch + 1}; lower the "
                                       "learning rate or check the data")
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if on_epoch:
            on_epoch(epoch + 1, epochs, float(np.mean(losses)))
    (eval_mode or (lambda m: m.eval()))(model)
    return model


def pt2e_qat_trainer(scheme: Any, x: np.ndarray, y: np.ndarray, seed: int, loss_fn: LossFn = cross_entropy,
                     on_epoch: ProgressFn | None = None) -> Callable[[Any], Any]:
    """The ``fine_tune(prepared_graph)`` an exporter calls between PT2E ``prepare_qat_pt2e`` and
    ``convert_pt2e``: :func:`fine_tune` with ``scheme``'s epochs, learning rate and batch size, and the
    exported graph's train/eval switches. ``loss_fn=kd_loss_fn(teacher, ...)`` makes it quantization-aware
    distillation against the float teacher."""

    def run(prepared: Any) -> Any:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        return fine_tune(prepared, x, y, epochs=scheme.epochs, lr=scheme.lr, batch_size=scheme.batch_size, seed=seed,
                         loss_fn=loss_fn, on_epoch=on_epoch, train_mode=move_exported_model_to_train,
                         eval_mode=move_exported_model_to_eval)

    return run

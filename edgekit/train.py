"""One small training loop, shared by QAT fine-tuning and (later) distillation.

The loss is a hook: ``loss_fn(outputs, labels, inputs) -> scalar``. Cross-entropy is the
default; a KD loss closes over a teacher and calls it on ``inputs``, so QAT composes with
distillation without another loop.

>>> # model = fine_tune(model, x, y, epochs=2, loss_fn=cross_entropy)
"""

from __future__ import annotations

from typing import Any, Callable

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

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.errors import ValidationFailed
from edgekit.train import fine_tune


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y


def test_fine_tune_learns_and_reports_each_epoch():
    x, y = _data()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    seen = []
    fine_tune(model, x, y, epochs=30, lr=0.05, batch_size=16, on_epoch=lambda e, n, loss: seen.append((e, n, loss)))
    assert [e for e, _, _ in seen] == list(range(1, 31)) and seen[-1][2] < seen[0][2] / 2
    acc = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc >= 0.95 and not model.training


def test_loss_hook_receives_inputs_for_distillation():
    x, y = _data()
    calls = []

    def kd_like(outputs, labels, inputs):
        calls.append(inputs.shape)
        return torch.nn.functional.mse_loss(outputs, torch.zeros_like(outputs))

    fine_tune(torch.nn.Linear(4, 2), x, y, epochs=1, batch_size=32, loss_fn=kd_like)
    assert calls == [(32, 4), (32, 4)]


def test_non_finite_loss_is_a_clear_error():
    x, y = _data()
    with pytest.raises(ValidationFailed, match="training loss became nan in epoch 1"):
        fine_tune(torch.nn.Linear(4, 2), x, y, epochs=1, loss_fn=lambda o, t, i: o.sum() * float("nan"))

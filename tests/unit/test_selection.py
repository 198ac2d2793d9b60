"""What ships after distillation (edgekit.selection): the distilled student only when it is significantly
better than the project's [model] on calib, or smaller by design, or when the project says so."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgekit.distill.spec import DistillSpec
from edgekit.lm.model import Decoder, DecoderConfig
from edgekit.selection import after_distill, choose, mcnemar_p, paired_t_p


def test_mcnemar_is_the_exact_binomial_tail():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 1) == pytest.approx(5 / 16)  # P(X >= 3), X ~ Bin(4, 1/2)
    assert mcnemar_p(6, 0) == pytest.approx(1 / 64)
    assert mcnemar_p(0, 6) == 1.0
    assert mcnemar_p(10, 2) == pytest.approx(sum(math.comb(12, k) for k in range(10, 13)) / 4096)


def test_the_paired_t_test_is_one_sided_in_the_metrics_direction():
    rng = np.random.default_rng(0)
    model = rng.normal(3.0, 0.5, 200)
    better = model - 0.2 + rng.normal(0, 0.05, 200)  # lower NLL everywhere
    assert paired_t_p(better, model, higher_is_better=False) < 1e-10
    assert paired_t_p(better, model, higher_is_better=True) > 1 - 1e-10
    assert paired_t_p(model, model, higher_is_better=False) == 1.0  # identical: never "better"
    assert paired_t_p(model - 1, model, higher_is_better=False) == 0.0  # better by the same amount everywhere


@pytest.mark.parametrize("args,shipped,words", [
    ((0.99, 0.96, 100, 100, 0.01, True, "better"), "distilled", "significantly better"),
    ((0.99, 0.96, 100, 100, 0.2, True, "better"), "model", "not significantly better than"),
    ((0.95, 0.96, 100, 100, 0.9, True, "better"), "model", "is worse than"),
    ((0.90, 0.96, 50, 100, 1.0, True, "better"), "distilled", "the smaller network the project asked for"),
    ((0.90, 0.96, 100, 100, 1.0, True, "student"), "distilled", '[distill] ship = "student"'),
    ((20.0, 25.0, 100, 100, 0.001, False, "better"), "distilled", "significantly better"),
    ((26.0, 25.0, 100, 100, 0.99, False, "better"), "model", "is worse than"),
])
def test_the_rules(args, shipped, words):
    d, m, dp, mp, p, higher, ship = args
    s = choose("metric", d, m, dp, mp, "a test", p, higher, ship)
    assert s.shipped == shipped and words in s.reason and s.split == "calib"
    assert (s.distilled, s.model, s.p_value) == (d, m, p)


def _lm(seed: int) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32)).eval()


def test_language_models_are_compared_by_calib_perplexity_window_by_window():
    """A decoder fitted to a repeating text against an untrained one of the same size: each ships when it is the
    fitted one, whichever slot it is in; the eval split is never read."""
    text = np.tile(np.arange(8), 40)
    windows = np.stack([text[i:i + 17] for i in range(0, 160, 8)])
    fitted = _lm(0).train()
    opt = torch.optim.Adam(fitted.parameters(), lr=1e-2)
    for _ in range(60):
        x = torch.from_numpy(windows)
        loss = torch.nn.functional.cross_entropy(fitted(x[:, :-1]).reshape(-1, 32), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    fitted.eval()

    class NoEval(dict):
        def __getitem__(self, k):
            assert k != "eval", "selection read the eval split"
            return super().__getitem__(k)

    project = SimpleNamespace(task=SimpleNamespace(kind="language-model"), distill=DistillSpec())
    splits = NoEval(calib=SimpleNamespace(x=windows), eval=None)
    kept = after_distill(project, splits, fitted, _lm(1), None)
    assert kept.shipped == "model" and kept.metric == "perplexity" and kept.model < 2 < kept.distilled
    assert kept.p_value > 0.99 and "paired t-test on 20 windows" in kept.test
    taken = after_distill(project, splits, _lm(1), fitted, None)
    assert taken.shipped == "distilled" and taken.p_value < 1e-6
    assert taken.distilled == pytest.approx(kept.model)

"""Distillation losses against numpy reference values (tests/fixtures/kd_golden.json), the T^2 gradient
scaling, per-token masking, FitNet regressors and hint paths, and the errors for bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.distill import DistillError
from edgekit.distill.hints import FeatureTap, Hint, HintLoss, HintRegressor, find_module, parameters_up_to
from edgekit.distill.losses import LOSSES, CrossEntropy, HintonKD, SoftKD, TopKLogits, make_loss, soft_kl

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "kd_golden.json").read_text())


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("case", GOLDEN["hinton"]["cases"], ids=lambda c: f"T{c['temperature']}-a{c['alpha']}"
                         + ("" if c["labels"] else "-nolabels"))
def test_hinton_matches_numpy_reference_value_and_gradient(case):
    g = GOLDEN["hinton"]
    zs = t64(g["student"]).requires_grad_()
    labels = torch.tensor(g["labels"]) if case["labels"] else None
    loss = make_loss({"name": "hinton", "kwargs": {"temperature": case["temperature"], "alpha": case["alpha"]}})
    value = loss(zs, t64(g["teacher"]), labels)
    value.backward()
    assert value.item() == pytest.approx(case["loss"], rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(zs.grad.numpy(), np.array(case["grad"]), rtol=1e-10, atol=1e-13)


def test_float32_logits_match_the_reference_within_float_precision():
    g, case = GOLDEN["hinton"], GOLDEN["hinton"]["cases"][9]
    value = HintonKD(case["temperature"], case["alpha"])(torch.tensor(g["student"], dtype=torch.float32),
                                                        torch.tensor(g["teacher"], dtype=torch.float32),
                                                        torch.tensor(g["labels"]))
    assert value.dtype == torch.float32 and value.item() == pytest.approx(case["loss"], rel=1e-5)


@pytest.mark.parametrize("case", GOLDEN["sequence"]["cases"], ids=lambda c: f"T{c['temperature']}-a{c['alpha']}")
def test_sequence_logits_are_averaged_over_unmasked_tokens(case):
    g = GOLDEN["sequence"]
    zs = t64(g["student"]).requires_grad_()
    labels, mask = torch.tensor(g["labels"]), torch.tensor(g["mask"])
    value = HintonKD(case["temperature"], case["alpha"])(zs, t64(g["teacher"]), labels, mask)
    value.backward()
    assert value.item() == pytest.approx(case["loss"], rel=1e-12)
    grad = zs.grad.numpy()
    np.testing.assert_allclose(grad, np.array(case["grad"]), rtol=1e-10, atol=1e-13)
    assert not grad[0, 1].any()  # the masked token: out of both terms
    assert grad[1, 2].any() == (case["alpha"] > 0)  # the unlabelled token: still learns from the teacher


def test_soft_and_ce_losses_match_the_reference_terms():
    g = GOLDEN["hinton"]
    zs, zt, y = t64(g["student"]), t64(g["teacher"]), torch.tensor(g["labels"])
    ce_case = next(c for c in g["cases"] if c["alpha"] == 0.0)
    soft_case = next(c for c in g["cases"] if c["alpha"] == 1.0 and not c["labels"])
    assert make_loss({"name": "ce"})(zs, None, y).item() == pytest.approx(ce_case["ce"], rel=1e-12)
    soft = make_loss({"name": "soft", "kwargs": {"temperature": soft_case["temperature"]}})
    assert soft(zs, zt).item() == pytest.approx(soft_case["loss"], rel=1e-12)


def test_alpha_zero_is_exactly_cross_entropy():
    g = GOLDEN["hinton"]
    zs, zt, y = torch.tensor(g["student"]), torch.tensor(g["teacher"]), torch.tensor(g["labels"])
    for t in (0.5, 1.0, 7.0):
        assert torch.equal(HintonKD(t, 0.0)(zs, zt, y), nn.functional.cross_entropy(zs, y))


def test_t_squared_keeps_the_soft_gradient_scale_as_temperature_grows():
    gen = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(8, 10, generator=gen, dtype=torch.float64), torch.randn(8, 10, generator=gen,
                                                                                 dtype=torch.float64) * 3
    keep = torch.ones(8, dtype=torch.bool)

    def grad_norms(t: float) -> tuple[float, float]:
        z = zs.clone().requires_grad_()
        (g_scaled,) = torch.autograd.grad(HintonKD(t, 1.0)(z, zt), z)
        (g_plain,) = torch.autograd.grad(soft_kl(z, zt, t, keep), z)
        return g_scaled.norm().item(), g_plain.norm().item()

    norms = {t: grad_norms(t) for t in (2.0, 5.0, 20.0, 80.0)}
    scaled = [s for s, _ in norms.values()]
    assert max(scaled) / min(scaled) < 1.15  # with T^2: about the same scale at every T
    assert norms[80.0][0] / norms[20.0][0] == pytest.approx(1.0, abs=0.02)  # and independent of T as T grows
    assert norms[80.0][1] / norms[20.0][1] == pytest.approx(1 / 16, rel=0.05)  # without: shrinks as 1/T^2
    # the large-T limit is the logit-matching gradient (z_s - z_t, centred) / (C * B), approached as 1/T
    limit = ((zs - zs.mean(1, keepdim=True)) - (zt - zt.mean(1, keepdim=True))) / (10 * 8)

    def distance_to_limit(t: float) -> float:
        z = zs.clone().requires_grad_()
        (g,) = torch.autograd.grad(HintonKD(t, 1.0)(z, zt), z)
        return (g - limit).abs().max().item()

    assert distance_to_limit(1e4) < 1e-3 * limit.abs().max().item()
    assert distance_to_limit(1e3) / distance_to_limit(1e4) == pytest.approx(10, rel=0.05)


def test_unlabelled_samples_learn_from_the_teacher_only():
    zs, zt = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([1, -100, 3, -100, -100, 0])
    mixed = HintonKD(2.0, 0.25)(zs, zt, labels)
    soft = SoftKD(2.0)(zs, zt)
    hard = CrossEntropy()(zs[[0, 2, 5]], None, labels[[0, 2, 5]])
    assert mixed.item() == pytest.approx(0.25 * soft.item() + 0.75 * hard.item(), rel=1e-12)


def test_no_counted_position_gives_zero_loss_with_a_graph():
    zs = torch.randn(2, 3, 4, requires_grad=True)
    value = HintonKD(2.0, 0.5)(zs, torch.randn(2, 3, 4), torch.full((2, 3), -100), torch.zeros(2, 3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and not zs.grad.any()


def test_top_k_over_the_whole_vocabulary_is_the_full_kd_loss():
    zs, zt = torch.randn(2, 5, 40, dtype=torch.float64), 3 * torch.randn(2, 5, 40, dtype=torch.float64)
    labels, mask = torch.randint(0, 40, (2, 5)), torch.rand(2, 5) > 0.3
    full = torch.topk(zt, 40)
    for t, a in ((1.0, 0.5), (4.0, 1.0)):
        expected = HintonKD(t, a)(zs.requires_grad_(), zt, labels, mask)
        (expected_grad,) = torch.autograd.grad(expected, zs)
        for top in (TopKLogits(full.values, full.indices.int(), torch.logsumexp(zt / t, -1), t),
                    TopKLogits(full.values, full.indices.int())):  # with the rest bucket (empty) and renormalised
            value = HintonKD(t, a)(zs, top, labels, mask)
            assert value.item() == pytest.approx(expected.item(), rel=1e-10)
            np.testing.assert_allclose(torch.autograd.grad(value, zs)[0].numpy(), expected_grad.numpy(), rtol=1e-7,
                                       atol=1e-12)


def test_top_k_keeps_the_teachers_probabilities_and_the_rest_as_one_outcome():
    zs = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    zt = torch.tensor([[5.0, 4.0, 1.0, 0.5]], dtype=torch.float64)  # the teacher's top 2: classes 0 and 1
    top = torch.topk(zt, 2)
    pt, ps = torch.softmax(zt / 2, -1), torch.softmax(zs / 2, -1)
    # k + 1 outcomes: class 0, class 1, and "2 or 3", each with its exact probability
    p, q = torch.cat([pt[:, :2], pt[:, 2:].sum(-1, keepdim=True)], -1), torch.cat(
        [ps[:, :2], ps[:, 2:].sum(-1, keepdim=True)], -1)
    expected = (p * (p.log() - q.log())).sum()
    with_rest = TopKLogits(top.values, top.indices, torch.logsumexp(zt / 2, -1), 2.0)
    assert SoftKD(2.0)(zs, with_rest).item() == pytest.approx(4 * expected.item(), rel=1e-12)
    # without the normaliser: the teacher renormalised over its top 2 (the common shortcut)
    r = torch.softmax(top.values / 2, -1)
    shortcut = (r * (r.log() - torch.log_softmax(zs / 2, -1)[:, :2])).sum()
    assert SoftKD(2.0)(zs, TopKLogits(top.values, top.indices)).item() == pytest.approx(4 * shortcut.item(), rel=1e-12)
    with pytest.raises(DistillError, match="normalised at temperature 2.0, the loss is at 1.0"):
        SoftKD(1.0)(zs, with_rest)


def test_top_k_teacher_for_other_positions_or_a_larger_vocabulary_is_refused():
    zs = torch.randn(2, 3, 10)
    top = torch.topk(torch.randn(2, 4, 10), 5)
    with pytest.raises(DistillError, match="differ in their positions"):
        HintonKD()(zs, TopKLogits(top.values, top.indices), torch.zeros(2, 3, dtype=torch.long))
    top = torch.topk(torch.randn(2, 3, 12), 5)
    with pytest.raises(DistillError, match="indices go up to 1[01] but the student has 10 classes"):
        HintonKD(alpha=1.0)(zs, TopKLogits(top.values, torch.full_like(top.indices, 11)))


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": 0.0}, "temperature must be a number > 0, got 0.0"),
    ({"temperature": -2}, "temperature must be a number > 0, got -2"),
    ({"temperature": float("nan")}, "temperature must be a number > 0"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\].*got 1.5"),
    ({"alpha": -0.1}, r"alpha must be in \[0, 1\].*got -0.1"),
])
def test_bad_temperature_or_alpha_is_refused(kwargs, message):
    with pytest.raises(DistillError, match=message):
        make_loss({"name": "hinton", "kwargs": kwargs})


def test_teacher_and_student_with_different_class_counts_are_refused():
    with pytest.raises(DistillError, match=r"teacher outputs 12 classes but the student 10"):
        HintonKD()(torch.randn(4, 10), torch.randn(4, 12), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DistillError, match="differ in shape"):
        HintonKD()(torch.randn(4, 10), torch.randn(5, 10), torch.zeros(4, dtype=torch.long))


def test_missing_labels_need_soft_labels_only_mode():
    with pytest.raises(DistillError, match="alpha = 0.9 needs labels.*use alpha = 1"):
        HintonKD(alpha=0.9)(torch.randn(4, 10), torch.randn(4, 10))
    with pytest.raises(DistillError, match="'soft' loss uses soft labels only"):
        SoftKD(alpha=0.5)


def test_registry_round_trips_every_loss_and_names_mistakes():
    for name, cls in LOSSES.items():
        loss = cls()
        assert make_loss(loss.to_config()) == loss and loss.to_config()["name"] == name
    assert make_loss({"name": "hinton", "kwargs": {"temperature": 2.0}}) == HintonKD(temperature=2.0)
    assert isinstance(make_loss({"name": "ce"}), CrossEntropy)
    with pytest.raises(DistillError, match="unknown loss 'hintn'; known: ce, cosine, hinton, mse, soft"):
        make_loss({"name": "hintn"})
    with pytest.raises(DistillError, match="loss 'hinton' has no setting tau; it takes alpha, ignore_index, "):
        make_loss({"name": "hinton", "kwargs": {"tau": 2}})


# ---------------------------------------------------------------- FitNet hints
@pytest.mark.parametrize("case", GOLDEN["hint"], ids=lambda c: c["kind"])
def test_hint_loss_matches_numpy_reference(case):
    s, t = t64(case["student"]), t64(case["teacher"])
    loss = HintLoss([Hint("t", "s")], {"s": tuple(s.shape)}, {"t": tuple(t.shape)}).double()
    mapping = loss.regressors[0].map
    if case["weight"] is None:
        assert isinstance(mapping, nn.Identity)
    else:
        weight = t64(case["weight"])
        with torch.no_grad():
            mapping.weight.copy_(weight.view(mapping.weight.shape))
            mapping.bias.copy_(t64(case["bias"]))
    assert loss({"s": s}, {"t": t}).item() == pytest.approx(case["loss"], rel=1e-12)


def test_regressor_kinds_and_output_shapes():
    conv = HintRegressor((2, 16, 8, 8), (2, 64, 8, 8))
    assert isinstance(conv.map, nn.Conv2d) and conv.map.kernel_size == (1, 1)
    out, target = conv(torch.randn(2, 16, 8, 8), torch.randn(2, 64, 8, 8))
    assert out.shape == target.shape == (2, 64, 8, 8)
    pooled = HintRegressor((2, 16, 8, 8), (2, 32, 4, 4))
    out, target = pooled(torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4))
    assert out.shape == target.shape == (2, 32, 4, 4)
    out, target = HintRegressor((2, 8, 3, 6), (2, 8, 6, 3))(torch.randn(2, 8, 3, 6), torch.randn(2, 8, 6, 3))
    assert out.shape == target.shape == (2, 8, 3, 3)
    lin = HintRegressor((3, 7, 32), (3, 7, 128))  # sequence features [B, L, D]
    assert isinstance(lin.map, nn.Linear) and lin(torch.randn(3, 7, 32), torch.randn(3, 7, 128))[0].shape == (3, 7, 128)
    with pytest.raises(DistillError, match=r"cannot map a student feature of shape \[2, 16, 8, 8\] onto a teacher "
                                           r"hint of shape \[2, 128\]"):
        HintRegressor((2, 16, 8, 8), (2, 128))
    with pytest.raises(DistillError, match="differ in length"):
        HintRegressor((3, 7, 32), (3, 9, 32))


class Small(nn.Module):
    def __init__(self, width: int = 4, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_wrong_hint_path_lists_the_nearest_module_names():
    with pytest.raises(DistillError, match=r"student \(Small\) has no module 'feature.2'; nearest: features.2"):
        find_module(Small(), "feature.2", "student")
    with pytest.raises(DistillError) as e:
        HintLoss.for_models(Small(), Small(8), [Hint("classifer.1", "features.1")], torch.randn(2, 1, 8, 8))
    assert "teacher (Small) has no module 'classifer.1'; nearest: classifier.1" in str(e.value)
    with pytest.raises(DistillError, match="must be TEACHER_PATH=STUDENT_PATH"):
        Hint.parse("features.2")


def test_hints_are_read_by_hooks_and_the_models_are_left_as_they_were():
    student, teacher = Small(4), Small(8)
    before = [type(m) for m in student.modules()]
    loss = HintLoss.for_models(student, teacher, [Hint.parse("features.1=features.1")], torch.randn(2, 1, 8, 8))
    assert isinstance(loss.regressors[0].map, nn.Conv2d) and loss.regressors[0].map.out_channels == 8
    assert [type(m) for m in student.modules()] == before
    assert not student.features[1]._forward_hooks and not teacher.features[1]._forward_hooks
    with FeatureTap(student, ["features.2"], "student") as tap:
        logits = student(torch.randn(3, 1, 8, 8))
        assert tap.take()["features.2"].shape == (3, 4, 4, 4) and logits.shape == (3, 10)
        with pytest.raises(DistillError, match="did not run in the forward pass"):
            tap.take()


def test_stage_one_trains_only_what_the_guided_layer_depends_on():
    model = Small(4)
    names = {id(p): n for n, p in model.named_parameters()}
    used = parameters_up_to(model, ["features.2"], torch.randn(2, 1, 8, 8))
    assert sorted(names[id(p)] for p in used) == ["features.0.bias", "features.0.weight"]

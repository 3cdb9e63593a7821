"""Known-answer checks of every loss against hand numbers or an independent numpy formula."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from ddvlm_core import losses as L


def np_softmax(z, tau=1.0):
    e = np.exp(z / tau - (z / tau).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_cross_entropy_by_hand():
    z = torch.tensor([[2.0, 1.0, 0.0]])
    expected = -math.log(math.e**2 / (math.e**2 + math.e + 1))
    assert L.classification_loss(z, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_kl_by_hand_and_its_direction():
    # tau = 2: p_t = softmax([0, 0]/2) = [1/2, 1/2]; p_s = softmax([ln 9, 0]/2) = [3/4, 1/4]
    z_t, z_s = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(9.0), 0.0]])
    kl_t_s = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p_t || p_s)
    kl_s_t = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_s || p_t)
    got = L.distillation_kl(z_t, z_s, tau=2.0).item()
    assert got == pytest.approx(4 * kl_t_s, rel=1e-6)
    assert abs(got - 4 * kl_s_t) > 1e-3  # the other direction is a different number


def test_self_distillation_schedule():
    torch.manual_seed(0)
    z_s, z_t, y = torch.randn(4, 7), torch.randn(4, 7), torch.tensor([0, 3, 6, 2])
    ce = L.classification_loss(z_s, y)
    assert torch.equal(L.self_distillation_loss(z_s, z_t, y, epoch=1), ce)  # epoch 1: CE only
    kd = L.distillation_kl(z_t, z_s, 2.0)
    torch.testing.assert_close(L.self_distillation_loss(z_s, z_t, y, epoch=2), 0.7 * ce + 0.3 * kd)


def test_distillation_gives_no_gradient_to_the_teacher():
    z_t = torch.randn(3, 7, requires_grad=True)
    z_s = torch.randn(3, 7, requires_grad=True)
    L.self_distillation_loss(z_s, z_t, torch.tensor([1, 2, 3]), epoch=3).backward()
    assert z_t.grad is None and z_s.grad is not None


def test_ema_teacher_follows_the_formula_step_by_step():
    student = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    teacher = L.EMATeacher(student, decay=0.99)
    theta0 = student[0].weight.detach().clone()
    assert torch.equal(teacher.model[0].weight, theta0)  # step 0: a copy
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    thetas = []
    for step in range(2):
        with torch.no_grad():
            student[0].weight.add_(torch.full_like(theta0, 0.5 * (step + 1)))
            student[2].running_mean.fill_(step + 7.0)
        thetas.append(student[0].weight.detach().clone())
        teacher.update(student)
    lam = 0.99
    expected = lam**2 * theta0 + lam * (1 - lam) * thetas[0] + (1 - lam) * thetas[1]
    torch.testing.assert_close(teacher.model[0].weight, expected, atol=1e-7, rtol=0)
    assert torch.equal(teacher.model[2].running_mean, torch.full((2,), 8.0))  # buffers copied


def test_pearson_matches_numpy_and_constant_vectors_give_zero():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    got = L.pearson_correlation(torch.tensor(a), torch.tensor(b), dim=1).numpy()
    expected = [np.corrcoef(a[i], b[i])[0, 1] for i in range(5)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    const = L.pearson_correlation(torch.ones(1, 7), torch.tensor(b[:1]), dim=1)
    assert const.item() == 0.0 and not torch.isnan(const).any()


def np_response_loss(z_t, z_s, tau):
    y_t, y_s = np_softmax(z_t, tau), np_softmax(z_s, tau)
    inter = 1 - np.mean([np.corrcoef(y_t[i], y_s[i])[0, 1] for i in range(len(y_t))])
    intra = 1 - np.mean([np.corrcoef(y_t[:, j], y_s[:, j])[0, 1] for j in range(y_t.shape[1])])
    return tau**2 * (inter + intra)


def test_response_loss_matches_an_independent_formula():
    rng = np.random.default_rng(1)
    z_t, z_s = rng.normal(size=(4, 7)) * 3, rng.normal(size=(4, 7)) * 3
    got = L.response_loss(torch.tensor(z_t), torch.tensor(z_s), tau=4.0).item()
    assert got == pytest.approx(np_response_loss(z_t, z_s, 4.0), rel=1e-5)
    same = L.response_loss(torch.tensor(z_t), torch.tensor(z_t), tau=4.0).item()
    assert same == pytest.approx(0.0, abs=1e-4)  # eps in the denominator: not exactly 0


def np_feature_loss(h_t, h_s, tau, lam):
    ht = h_t / np.linalg.norm(h_t, axis=1, keepdims=True)
    hs = h_s / np.linalg.norm(h_s, axis=1, keepdims=True)
    p, q = np_softmax(ht @ ht.T, tau), np_softmax(ht @ hs.T, tau)
    kl = lambda a, b: np.mean(np.sum(a * np.log(a / b), axis=1))  # noqa: E731
    m = (p + q) / 2
    return kl(q, p) + lam * (0.5 * kl(p, m) + 0.5 * kl(q, m)), kl(p, q) + lam * (0.5 * kl(p, m) + 0.5 * kl(q, m))


def test_feature_loss_matches_an_independent_formula_with_kl_q_to_p():
    rng = np.random.default_rng(2)
    h_t, h_s = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    expected, other_direction = np_feature_loss(h_t, h_s, 1.0, 0.2)
    got = L.feature_loss(torch.tensor(h_t), torch.tensor(h_s)).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert abs(got - other_direction) > 1e-4
    assert L.feature_loss(torch.tensor(h_t), torch.tensor(h_t) * 3).item() == pytest.approx(0.0, abs=1e-7)


def test_jsd_is_symmetric_and_bounded_by_ln2():
    p = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [0.6, 0.4]])
    assert L.js_divergence(p, q).item() == pytest.approx(L.js_divergence(q, p).item())
    assert L.js_divergence(p[:1], q[:1]).item() == pytest.approx(math.log(2), rel=1e-6)


def test_visual_loss_is_the_weighted_sum_and_only_the_student_learns():
    torch.manual_seed(0)
    z_s = torch.randn(4, 7, requires_grad=True)
    h_s = torch.randn(4, 16, requires_grad=True)
    z_t, h_t = torch.randn(4, 7, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    y = torch.tensor([0, 1, 4, 6])
    loss = L.visual_student_loss(z_s, y, z_t, h_t, h_s, alpha=0.5, beta=2.0)
    expected = L.classification_loss(z_s, y) + 0.5 * L.response_loss(z_t, z_s) + 2.0 * L.feature_loss(h_t, h_s)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert z_t.grad is None and h_t.grad is None
    assert z_s.grad.abs().sum() > 0 and h_s.grad.abs().sum() > 0


def test_gradients_of_the_distillation_losses_are_correct():
    torch.manual_seed(0)
    z_t, h_t = torch.randn(4, 7, dtype=torch.double), torch.randn(4, 5, dtype=torch.double)
    z_s = torch.randn(4, 7, dtype=torch.double, requires_grad=True)
    h_s = torch.randn(4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: L.response_loss(z_t, z, 4.0), (z_s,))
    assert torch.autograd.gradcheck(lambda h: L.feature_loss(h_t, h), (h_s,))
    assert torch.autograd.gradcheck(lambda z: L.distillation_kl(z_t, z, 2.0), (z_s,))


def test_ema_leaves_frozen_parameters_exactly_equal_to_the_student():
    student = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    student[0].requires_grad_(False)  # e.g. a LoRA backbone's base weights
    teacher = L.EMATeacher(student, decay=0.99)
    for _ in range(50):
        with torch.no_grad():
            student[1].weight.add_(0.1)
        teacher.update(student)
    assert torch.equal(teacher.model[0].weight, student[0].weight)
    assert not torch.equal(teacher.model[1].weight, student[1].weight)  # trained part lags behind

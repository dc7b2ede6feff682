"""KL estimators k1 / k2 / k3: zero at equal log-probs, hand values, k3 ≥ 0 and finite."""

from __future__ import annotations

import math

import pytest
import torch

from mmrl.algorithms import KL_ESTIMATORS
from mmrl.algorithms.divergences import k1, k2, k3

ESTIMATORS = [k1, k2, k3]


def test_registered():
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert [KL_ESTIMATORS.get(n) for n in KL_ESTIMATORS.names()] == ESTIMATORS


@pytest.mark.parametrize("fn", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_zero_at_equal_logprobs(fn, dtype):
    logp = torch.tensor([0.0, -0.1, -1.0, -7.3, -50.0], dtype=dtype)
    assert torch.equal(fn(logp, logp.clone()), torch.zeros_like(logp))


def test_hand_values():
    # logp = −1, target = −2: δ = log π_target − log π_θ = −1
    logp, target = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)
    assert k1(logp, target).item() == pytest.approx(1.0)
    assert k2(logp, target).item() == pytest.approx(0.5)
    assert k3(logp, target).item() == pytest.approx(math.exp(-1) + 1 - 1)
    # and the other way round: δ = +1
    assert k1(target, logp).item() == pytest.approx(-1.0)
    assert k2(target, logp).item() == pytest.approx(0.5)
    assert k3(target, logp).item() == pytest.approx(math.e - 1 - 1)


def test_k3_second_order_matches_k2():
    logp = torch.tensor([-1.0], dtype=torch.float64)
    target = logp + 1e-4
    assert k3(logp, target).item() == pytest.approx(k2(logp, target).item(), rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e-6, 1e-4, 1e-2, 1.0, 10.0])
def test_k3_nonnegative(dtype, scale):
    # exp(δ) − δ − 1 cancels catastrophically near 0 and went negative in fp32 / bf16.
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(20000, generator=g, dtype=torch.float64) * 3
    target = logp + torch.randn(20000, generator=g, dtype=torch.float64) * scale
    assert (k3(logp.to(dtype), target.to(dtype)) >= 0).all()


def test_k3_finite_for_huge_differences():
    logp = torch.tensor([0.0, -1e4, -1e30, 0.0], requires_grad=True)
    target = torch.tensor([-1e4, 0.0, 0.0, -1e30])
    out = k3(logp, target)
    assert torch.isfinite(out).all() and (out > 0).all()
    out.sum().backward()
    assert torch.isfinite(logp.grad).all()


def test_k1_unbiased_k3_unbiased_in_expectation():
    # Samples x ~ q = N(0, 1), p = N(0.3, 1): KL(q‖p) = 0.045; k1 and k3 are unbiased, k2 nearly so here.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=g, dtype=torch.float64)
    logq = -0.5 * x**2
    logp = -0.5 * (x - 0.3) ** 2
    assert k1(logq, logp).mean().item() == pytest.approx(0.045, abs=2e-3)
    assert k3(logq, logp).mean().item() == pytest.approx(0.045, abs=2e-3)


def test_k3_gradient_matches_closed_form():
    # ∂k3/∂logp = 1 − exp(δ)
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([-2.0, -1.0, -0.5], dtype=torch.float64)
    k3(logp, target).sum().backward()
    torch.testing.assert_close(logp.grad, 1 - torch.exp(target - logp.detach()))


def test_f_divergences_by_hand_and_their_gradients():
    from mmrl.algorithms.divergences import F_DIVERGENCES

    assert F_DIVERGENCES.names() == ["forward_kl", "js"]
    log_u = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64, requires_grad=True)
    fkl = F_DIVERGENCES.get("forward_kl")(log_u)
    e = math.e
    torch.testing.assert_close(fkl, torch.tensor([0.0, e - 2.0, 1 / e], dtype=torch.float64))
    u = torch.exp(log_u.detach())
    js = F_DIVERGENCES.get("js")(log_u)
    expected = u * log_u.detach() - (u + 1) * torch.log((u + 1) / 2)
    torch.testing.assert_close(js, expected)
    # gradients w.r.t. log u: forward KL u − 1; JS u·log(2u / (u + 1)); both 0 at u = 1
    (gk,) = torch.autograd.grad(fkl.sum(), log_u, retain_graph=True)
    torch.testing.assert_close(gk, u - 1)
    (gj,) = torch.autograd.grad(js.sum(), log_u)
    torch.testing.assert_close(gj, u * torch.log(2 * u / (u + 1)))
    huge = F_DIVERGENCES.get("js")(torch.tensor([500.0, -500.0]))
    assert torch.isfinite(huge).all() and (huge >= 0).all()

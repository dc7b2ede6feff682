"""Policy losses and aggregations: clip behaviour by hand, gradients, micro-batch invariance (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrl.algorithms import AGGREGATIONS, POLICY_LOSSES
from mmrl.algorithms.losses import ppo_clip, seq_mean_token_mean, token_mean
from mmrl.algorithms.objective import tis_weights

CI = settings(max_examples=40, deadline=None, derandomize=True, database=None)  # small, reproducible
F64 = torch.float64


def test_registered():
    assert POLICY_LOSSES.get("ppo_clip") is ppo_clip
    assert AGGREGATIONS.names() == ["seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_mean"]
    assert POLICY_LOSSES.names() == ["cispo", "gppo", "ppo_clip", "reinforce", "sapo"]


def _one_token(ratio: float, adv: float, clip_low=0.2, clip_high=0.28):
    old = torch.zeros(1, 1, dtype=F64)
    logp = torch.full((1, 1), math.log(ratio), dtype=F64, requires_grad=True)
    loss, clipped = ppo_clip(logp - old, logp, torch.tensor([adv], dtype=F64), clip_low=clip_low, clip_high=clip_high)
    loss.sum().backward()
    return loss.item(), clipped.item(), logp.grad.item()


@pytest.mark.parametrize(
    ("ratio", "adv", "loss", "clipped"),
    [
        (1.3, 1.0, -1.28, 1.0),  # Â > 0, above 1 + ε_high = 1.28 → clipped at 1.28, no gradient
        (1.25, 1.0, -1.25, 0.0),  # inside the asymmetric range: 1.25 < 1.28 (would clip with ε_high = 0.2)
        (0.7, -1.0, 0.8, 1.0),  # Â < 0, below 1 − ε_low = 0.8 → clipped at 0.8, no gradient
        (0.7, 1.0, -0.7, 0.0),  # Â > 0, ratio low: the unclipped term is the minimum (pessimistic bound)
        (1.3, -1.0, 1.3, 0.0),  # Â < 0, ratio high: unclipped, the gradient keeps pushing down
        (0.85, -2.0, 1.7, 0.0),  # inside [0.8, 1.28]
    ],
)
def test_clip_higher_hand_values(ratio, adv, loss, clipped):
    value, was_clipped, grad = _one_token(ratio, adv)
    assert value == pytest.approx(loss)
    assert was_clipped == clipped
    if clipped:
        assert grad == 0.0
    else:  # ∂(−ρÂ)/∂logp = −ρÂ
        assert grad == pytest.approx(-ratio * adv)


def test_symmetric_clip_clips_at_1_2():
    value, was_clipped, grad = _one_token(1.25, 1.0, clip_low=0.2, clip_high=0.2)
    assert value == pytest.approx(-1.2) and was_clipped == 1.0 and grad == 0.0


def _batch(n=5, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(n, t, generator=g, dtype=F64) * 3).requires_grad_()
    adv = torch.randn(n, generator=g, dtype=F64)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(F64)  # [N, T]
    return logp, adv, mask


def test_ratio_one_clip_inactive_and_gradient_is_reinforce():
    logp, adv, mask = _batch()
    loss, clipped = ppo_clip(logp - logp.detach(), logp, adv, clip_low=0.2, clip_high=0.28)
    assert clipped.sum() == 0
    torch.testing.assert_close(loss, -adv[:, None].expand_as(loss))
    tokens = int(mask.sum())
    token_mean(loss, mask, global_tokens=tokens, global_seqs=5).backward()
    torch.testing.assert_close(logp.grad, -adv[:, None] * mask / tokens)


def test_ratio_one_gradient_seq_mean_token_mean():
    logp, adv, mask = _batch()
    loss, _ = ppo_clip(logp - logp.detach(), logp, adv, clip_low=0.2, clip_high=0.2)
    seq_mean_token_mean(loss, mask, global_tokens=int(mask.sum()), global_seqs=5).backward()
    torch.testing.assert_close(logp.grad, -adv[:, None] * mask / mask.sum(1, keepdim=True) / 5)


@pytest.mark.parametrize("agg", [token_mean, seq_mean_token_mean])
def test_zero_advantage_zero_gradient(agg):
    logp, _, mask = _batch()
    old = logp.detach() + 0.3 * torch.randn(logp.shape, dtype=F64)  # ratios away from 1, some clipped
    loss, clipped = ppo_clip(logp - old, logp, torch.zeros(5, dtype=F64), clip_low=0.2, clip_high=0.28)
    assert clipped.sum() == 0 and torch.equal(loss, torch.zeros_like(loss))
    agg(loss, mask, global_tokens=int(mask.sum()), global_seqs=5).backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))


@pytest.mark.parametrize("agg", [token_mean, seq_mean_token_mean])
def test_masked_tokens_get_no_gradient(agg):
    logp, adv, mask = _batch()
    old = logp.detach() + 0.1 * torch.randn(logp.shape, dtype=F64)
    loss, _ = ppo_clip(logp - old, logp, adv, clip_low=0.2, clip_high=0.28)
    agg(loss, mask, global_tokens=int(mask.sum()), global_seqs=5).backward()
    assert torch.equal(logp.grad[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=F64))


def test_aggregation_hand_values():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    assert token_mean(loss, mask, global_tokens=5, global_seqs=2).item() == pytest.approx(18 / 5)
    assert seq_mean_token_mean(loss, mask, global_tokens=5, global_seqs=2).item() == pytest.approx((1.5 + 5) / 2)
    # the normaliser is the global batch's, not this micro-batch's
    assert token_mean(loss, mask, global_tokens=10, global_seqs=4).item() == pytest.approx(18 / 10)
    assert seq_mean_token_mean(loss, mask, global_tokens=10, global_seqs=4).item() == pytest.approx(6.5 / 4)


@pytest.mark.parametrize("agg", [token_mean, seq_mean_token_mean])
def test_all_masked_is_finite_zero(agg):
    loss = torch.ones(2, 3, dtype=F64)
    mask = torch.zeros(2, 3, dtype=F64)
    assert agg(loss, mask, global_tokens=0, global_seqs=0).item() == 0.0


@st.composite
def batches(draw):
    n = draw(st.integers(1, 6))
    t = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    cuts = sorted(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=3, unique=True))) if n > 1 else []
    clip_high = draw(st.sampled_from([0.2, 0.28]))
    return n, t, seed, cuts, clip_high


@CI
@given(batches(), st.sampled_from(["token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                   "seq_mean_token_sum_norm"]))
def test_micro_batch_split_invariance(batch, agg_name):
    n, t, seed, cuts, clip_high = batch
    agg = AGGREGATIONS.get(agg_name)
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=F64) * 3
    old = logp + 0.4 * torch.randn(n, t, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    mask = (torch.rand(n, t, generator=g) < 0.7).to(F64)  # may include empty completions
    norms = dict(global_tokens=int(mask.sum()), global_seqs=n, max_tokens=t)

    def value_and_grad(bounds):
        x = logp.clone().requires_grad_()
        total = torch.zeros((), dtype=F64)
        for a, b in zip(bounds[:-1], bounds[1:]):
            loss, _ = ppo_clip(x[a:b] - old[a:b], x[a:b], adv[a:b], clip_low=0.2, clip_high=clip_high)
            part = agg(loss, mask[a:b], **norms)
            part.backward()  # gradients accumulate as in the trainer
            total = total + part.detach()
        return total, x.grad

    full_value, full_grad = value_and_grad([0, n])
    split_value, split_grad = value_and_grad([0, *cuts, n])
    torch.testing.assert_close(split_value, full_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(split_grad, full_grad, rtol=1e-12, atol=1e-12)


# ---- the other surrogates, by hand ------------------------------------------------------------------------------
def _token(name: str, ratio: float, adv: float, **kw):
    logp = torch.full((1, 1), math.log(ratio), dtype=F64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=F64)
    loss, clipped = POLICY_LOSSES.get(name)(logp - old, logp, torch.tensor([adv], dtype=F64), **kw)
    loss.sum().backward()
    return loss.item(), clipped.item(), logp.grad.item()


def test_gppo_keeps_a_bounded_gradient_where_ppo_has_none():
    # Â > 0, ρ = 1.5 > 1.28: PPO's value −1.28 and no gradient; GPPO's value −1.28 and gradient −1.28·Â
    assert _token("ppo_clip", 1.5, 1.0, clip_low=0.2, clip_high=0.28)[2] == 0.0
    value, clipped, grad = _token("gppo", 1.5, 1.0, clip_low=0.2, clip_high=0.28)
    assert value == pytest.approx(-1.28) and clipped == 1.0 and grad == pytest.approx(-1.28)
    # Â < 0, ρ = 0.5 < 0.8: value 0.8·|Â|, gradient −(0.8)·Â = 0.8·2
    value, _, grad = _token("gppo", 0.5, -2.0, clip_low=0.2, clip_high=0.28)
    assert value == pytest.approx(1.6) and grad == pytest.approx(1.6)
    # inside the range it is PPO
    assert _token("gppo", 1.1, 1.0, clip_low=0.2, clip_high=0.28) == pytest.approx(_token("ppo_clip", 1.1, 1.0, clip_low=0.2, clip_high=0.28))


def test_dual_clip_caps_negative_advantage_loss():
    # Â = −1, ρ = 5: PPO loss = 5, dual clip c = 3 caps it at 3 with no gradient
    assert _token("ppo_clip", 5.0, -1.0, clip_low=0.2, clip_high=0.2)[0] == pytest.approx(5.0)
    value, _, grad = _token("ppo_clip", 5.0, -1.0, clip_low=0.2, clip_high=0.2, clip_c=3.0)
    assert value == pytest.approx(3.0) and grad == 0.0
    assert _token("ppo_clip", 5.0, 1.0, clip_low=0.2, clip_high=0.2, clip_c=3.0)[0] == pytest.approx(-1.2)


def test_cispo_detached_clipped_weight_times_logp():
    # ρ = 1.5 clipped to 1.2; ℓ = −1.2·Â·log π, gradient −1.2·Â whatever the clipping
    value, clipped, grad = _token("cispo", 1.5, 2.0, clip_low=10.0, clip_high=0.2)
    assert value == pytest.approx(-1.2 * 2.0 * math.log(1.5)) and clipped == 1.0 and grad == pytest.approx(-2.4)
    value, clipped, grad = _token("cispo", 0.9, -1.0, clip_low=10.0, clip_high=0.2)
    assert clipped == 0.0 and grad == pytest.approx(0.9)


def test_sapo_gate_hand_values():
    # ρ = 1: ℓ = −(4/τ)·½·Â = −2Â/τ; gradient = −(4/τ)·σ'(0)·τ·ρ·Â = −Â
    value, clipped, grad = _token("sapo", 1.0, 1.0, tau_pos=1.0, tau_neg=1.05)
    assert value == pytest.approx(-2.0) and clipped == 0.0 and grad == pytest.approx(-1.0)
    value, _, grad = _token("sapo", 1.0, -1.0, tau_pos=1.0, tau_neg=1.05)
    assert value == pytest.approx(2.0 / 1.05) and grad == pytest.approx(1.0)
    # far from 1 the gate closes: ρ = 3, τ = 1 → weight 4σ(2)(1 − σ(2)) ≈ 0.42
    s = 1 / (1 + math.exp(-2.0))
    assert _token("sapo", 3.0, 1.0, tau_pos=1.0, tau_neg=1.05)[2] == pytest.approx(-4 * s * (1 - s) * 3.0)


def test_reinforce_is_importance_weighted_pg():
    value, clipped, grad = _token("reinforce", 2.0, 0.5)
    assert value == pytest.approx(-1.0) and clipped == 0.0 and grad == pytest.approx(-1.0)


def test_sequence_ratio_is_the_geometric_mean_with_token_gradients():
    from mmrl.algorithms.losses import sequence_ratio

    logp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-1.5, -2.0, -3.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    lr = sequence_ratio(logp, old, mask)
    torch.testing.assert_close(lr.detach(), torch.full((1, 3), 0.25, dtype=F64))  # (0.5 + 0) / 2
    lr.sum().backward()
    torch.testing.assert_close(logp.grad, torch.ones(1, 3, dtype=F64))  # ∂/∂logp_t of (sg + logp − sg) = 1


def test_new_aggregations_hand_values():
    from mmrl.algorithms.losses import seq_mean_token_sum, seq_mean_token_sum_norm

    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    assert seq_mean_token_sum(loss, mask, global_tokens=5, global_seqs=2).item() == pytest.approx(18 / 2)
    assert seq_mean_token_sum_norm(loss, mask, global_tokens=5, global_seqs=2, max_tokens=4).item() == pytest.approx(18 / 8)


# ---- covariance-based token selection (Clip-Cov / KL-Cov) ---------------------------------------------------------
def _cov_batch():
    from mmrl.algorithms import TokenTerms

    logp = torch.tensor([[-0.1, -3.0, -0.2], [-2.5, -0.3, -4.0]], dtype=F64, requires_grad=True)
    old = logp.detach() - torch.tensor([[0.05, -0.02, 0.0], [0.01, 0.0, 0.03]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    adv = torch.tensor([2.0, -2.0], dtype=F64)
    return TokenTerms(logp=logp, old_logp=old, mask=mask, advantages=adv, generator=torch.Generator().manual_seed(0))


def test_token_covariance_by_hand():
    from mmrl.algorithms.objective import token_covariance

    t = _cov_batch()
    cov = token_covariance(t.logp, t.advantages, t.mask)
    lp = [-0.1, -3.0, -0.2, -2.5, -0.3]
    a = [2.0, 2.0, 2.0, -2.0, -2.0]
    mlp, ma = sum(lp) / 5, sum(a) / 5
    expected = [(x - mlp) * (y - ma) for x, y in zip(lp, a)]
    torch.testing.assert_close(cov[t.mask.bool()], torch.tensor(expected, dtype=F64))
    assert cov[1, 2] == 0.0


def test_kl_cov_adds_abs_log_ratio_on_top_tokens_and_clip_cov_detaches():
    import dataclasses

    from mmrl.algorithms import objective
    from mmrl.config import AlgorithmConfig

    base = dataclasses.replace(AlgorithmConfig(), clip_low=0.2, clip_high=0.2)
    norms = dict(global_tokens=5, global_seqs=2, max_tokens=3)
    plain, _ = objective(_cov_batch(), base, norms)
    # k·n = 0.4·5 = 2 tokens. Covariances (see test_token_covariance_by_hand): (1,0) 3.072 (a low log-prob with a
    # negative advantage) and (0,0) 1.792 are the top two; their |log ρ| are 0.01 and 0.05
    kl = dataclasses.replace(base, cov_mode="kl_cov", cov_ratio=0.4, cov_kl_coef=1.0)
    t = _cov_batch()
    loss, stats = objective(t, kl, norms)
    assert stats["cov_selected"] == 2.0
    assert loss.item() == pytest.approx(plain.item() + (0.01 + 0.05) / 5)
    clip = dataclasses.replace(base, cov_mode="clip_cov", cov_ratio=1.0, cov_low=-100.0, cov_high=100.0)
    t = _cov_batch()
    loss, stats = objective(t, clip, norms)
    loss.backward()
    assert stats["cov_selected"] == 5.0 and loss.item() == pytest.approx(plain.item())
    assert torch.equal(t.logp.grad, torch.zeros_like(t.logp))  # every token selected: no gradient at all


def test_lp_reg_selects_low_probability_negative_tokens_and_pushes_them_up():
    import dataclasses

    from mmrl.algorithms import TokenTerms, objective
    from mmrl.config import AlgorithmConfig

    logp = torch.tensor([[-0.1, -6.0, -5.0, -0.2], [-7.0, -0.3, -0.4, -0.5]], dtype=F64, requires_grad=True)
    mask = torch.ones(2, 4, dtype=F64)
    adv = torch.tensor([-1.0, 1.0], dtype=F64)  # only row 0 is negative
    log_mass = torch.full((2, 4), -0.5, dtype=F64)
    kept = torch.tensor([[True, False, True, True], [True, True, True, True]])
    algo = dataclasses.replace(AlgorithmConfig(), lp_reg_coef=1.0, lp_reg_share=0.5)  # k = 0.5·4 = 2 lowest
    t = TokenTerms(logp=logp, old_logp=logp.detach(), mask=mask, advantages=adv, proxy_log_mass=log_mass,
                   proxy_kept=kept)
    norms = dict(global_tokens=8, global_seqs=2, max_tokens=4)
    loss, stats = objective(t, algo, norms)
    # negative tokens (row 0) by log-prob: −6.0, −5.0 are the lowest two; −6.0 is filtered out by min-p → one token
    assert stats["lp_reg_tokens"] == 1.0
    plain, _ = objective(dataclasses.replace(t, proxy_log_mass=None), algo, norms)
    k3 = math.exp(0.5) - 0.5 - 1  # δ = log π_proxy − log π = −log Z = 0.5
    assert loss.item() == pytest.approx(plain.item() + k3 / 8)
    (g,) = torch.autograd.grad(loss - plain, logp)
    assert g[0, 2].item() == pytest.approx((1 - math.exp(0.5)) / 8) and g[0, 2] < 0  # descent raises log π
    assert torch.count_nonzero(g) == 1

def test_tis_weights():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 0.0]], requires_grad=True)
    samp = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -3.0, -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w = tis_weights(old, samp, mask, cap=2.0)
    oracle = [[min(math.exp(o - s), 2.0) * m for o, s, m in zip(*rows)]
              for rows in zip(old.tolist(), samp.tolist(), mask.tolist())]
    assert torch.allclose(w, torch.tensor(oracle)) and not w.requires_grad
    assert w[0, 0] == pytest.approx(math.exp(0.5)) and w[1, 0] == 2.0 and w[1, 2] == 0.0  # capped; masked
    assert torch.equal(tis_weights(samp, samp, mask, cap=2.0), mask.float())  # on-policy: weight 1
    forced = tis_weights(torch.tensor([[-6.0, -1.0]]), torch.tensor([[0.0, -1.0]]), torch.tensor([[1, 1]]), cap=2.0)
    assert forced.tolist() == [[1.0, 1.0]]  # a forced token (no sampler log-prob) keeps weight 1
    with pytest.raises(ValueError, match="> 0"):
        tis_weights(old, samp, mask, cap=0.0)


def test_tis_weights_scale_only_the_policy_gradient_term():
    from types import SimpleNamespace

    from mmrl.algorithms import TokenTerms, objective

    algo = SimpleNamespace(aggregation="token_mean", ratio_level="token", policy_loss="ppo_clip", clip_low=0.2,
                           clip_high=0.2, clip_c=None, cov_mode="none", kl_coef=0.0, lp_reg_coef=0.0,
                           entropy_coef=0.0, masked_kl_coef=0.0, masked_entropy_coef=0.0, tau_pos=1.0, tau_neg=1.0)
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    base = dict(old_logp=logp.detach(), mask=torch.ones(1, 2), advantages=torch.tensor([1.0]))
    norms = dict(global_tokens=2, global_seqs=1, max_tokens=2)
    plain, _ = objective(TokenTerms(logp=logp, **base), algo, norms)
    weighted, _ = objective(TokenTerms(logp=logp, is_weight=torch.tensor([[2.0, 0.0]]), **base), algo, norms)
    g_plain, = torch.autograd.grad(plain, logp)
    g_w, = torch.autograd.grad(weighted, logp)
    assert torch.allclose(g_w, g_plain * torch.tensor([[2.0, 0.0]]))


KNOBS = dict(clip_low=0.2, clip_high=0.28, clip_c=3.0, tau_pos=1.0, tau_neg=1.05)


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_every_policy_loss_is_finite_at_extreme_log_ratios_in_float32(name, level):
    """|log ρ| up to 100 in float32 (a replayed row's stored π_old can be far off): finite losses and gradients for
    Â ∈ {−1, 0, 1}; before, exp(100) = inf gave NaN gradients (ppo_clip, sapo), a NaN loss at Â = 0 (ppo_clip: inf·0)
    and gppo's ρ / sg[ρ] was inf at log ρ = −90. Where a hard clip is active the token's gradient is 0 (gppo: its
    bound's gradient (1 ± ε)·Â; cispo: its detached weight times Â)."""
    from mmrl.algorithms.losses import RATIO_LEVELS

    shifts = torch.tensor([0.0, 20.0, 60.0, 100.0, -20.0, -60.0, -100.0])
    old = torch.zeros(3, len(shifts))
    logp = (old - shifts).clone().requires_grad_(True)  # log ρ = −shift … every sign and size
    adv = torch.tensor([-1.0, 0.0, 1.0])
    mask = torch.ones_like(old)
    log_ratio = RATIO_LEVELS.get(level)(logp, old, mask)
    loss, clipped = POLICY_LOSSES.get(name)(log_ratio, logp, adv, **KNOBS)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all(), (loss, logp.grad)
    assert (loss[1] == 0).all() and (logp.grad[1] == 0).all()  # Â = 0: nothing, not inf · 0
    if name == "ppo_clip" and level == "token":
        assert (logp.grad[clipped.bool()] == 0).all() and clipped.any()
        assert loss[2, 6].item() == pytest.approx(-1.28)  # ρ = e^100, Â = 1: the clipped value, no gradient
    if level == "token" and name in EXTREME_GRADIENTS:  # log ρ = 0, −20, −60, −100, 20, 60, 100 on the Â = 1 row
        up, down = EXTREME_GRADIENTS[name]
        torch.testing.assert_close(logp.grad[2], torch.tensor(up, dtype=torch.float32), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(logp.grad[0], torch.tensor(down, dtype=torch.float32), atol=1e-6, rtol=1e-5)


# ∂ℓ/∂log π per token at log ρ = 0, −20, −60, −100, 20, 60, 100 (ε_low 0.2, ε_high 0.28), rows Â = 1 and Â = −1:
# cispo: −sg[clip(ρ, 0.8, 1.28)]·Â; gppo: −ρÂ inside the clip, −(1 ± ε)·Â where PPO's clip binds (ρ > 1.28 at
# Â > 0, ρ < 0.8 at Â < 0), −ρÂ where it does not (→ 0 for tiny ρ); reinforce: −ρÂ with log ρ clamped to ±20,
# no gradient from the bound on (e^−20 ≈ 2e-9 at −20); sapo: the gate's weight vanishes far from ρ = 1.
EXTREME_GRADIENTS = {
    "cispo": ([-1, -0.8, -0.8, -0.8, -1.28, -1.28, -1.28], [1, 0.8, 0.8, 0.8, 1.28, 1.28, 1.28]),
    "gppo": ([-1, 0, 0, 0, -1.28, -1.28, -1.28], [1, 0.8, 0.8, 0.8, 0, 0, 0]),
    "reinforce": ([-1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]),
    "sapo": ([-1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]),
}


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
@pytest.mark.parametrize("shift", [100.0, -100.0, 60.0])
def test_every_policy_loss_is_finite_at_extreme_sequence_log_ratios(name, shift):
    """Sequence-level ratios (GSPO): every token of a row off by the same amount, so the row's mean log ρ is ±100
    or 60 (the token test's shifts average to 0 per row and never reach the sequence level's extremes)."""
    from mmrl.algorithms.losses import RATIO_LEVELS

    old = torch.zeros(3, 5)
    logp = (old + shift).clone().requires_grad_(True)  # log ρ = shift on every token
    adv = torch.tensor([-1.0, 0.0, 1.0])
    log_ratio = RATIO_LEVELS.get("sequence")(logp, old, torch.ones_like(old))
    loss, _ = POLICY_LOSSES.get(name)(log_ratio, logp, adv, **KNOBS)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all(), (loss, logp.grad)
    assert (loss[1] == 0).all() and (logp.grad[1] == 0).all()
    if name == "ppo_clip":  # far outside the clip on the side it binds: the bound's value, no gradient
        row = 2 if shift > 0 else 0
        assert loss[row].tolist() == pytest.approx([-1.28 if shift > 0 else 0.8] * 5)
        assert (logp.grad[row] == 0).all()


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_per_token_advantages_act_token_by_token(name):
    """Advantages [N, T] (per-turn credit, `algorithm.turn_rewards`): constant along a row they give the [N] loss and
    gradient exactly; where they differ, each token's gradient follows its own (at ρ = 1: −Â_t / tokens)."""
    import dataclasses

    from mmrl.algorithms import TokenTerms, objective
    from mmrl.config import AlgorithmConfig

    algo = dataclasses.replace(AlgorithmConfig(), policy_loss=name, lp_reg_coef=0.5, lp_reg_share=0.5)
    logp = torch.tensor([[-0.1, -2.0, -0.5], [-1.5, -0.3, -0.7]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    adv = torch.tensor([0.7, -1.2], dtype=F64)
    norms = dict(global_tokens=5, global_seqs=2, max_tokens=3)
    extra = dict(proxy_log_mass=torch.full((2, 3), -0.5, dtype=F64), proxy_kept=torch.ones(2, 3, dtype=torch.bool))
    grads = []
    for a in (adv, adv.unsqueeze(1).expand(2, 3)):
        loss, _ = objective(TokenTerms(logp=logp, old_logp=logp.detach(), mask=mask, advantages=a, **extra), algo,
                            norms)
        grads.append(torch.autograd.grad(loss, logp)[0])
    torch.testing.assert_close(grads[0], grads[1])
    per_token = torch.tensor([[1.5, 0.5, 0.5], [-2.0, -1.2, -1.2]], dtype=F64)  # a call turn, then the answer
    loss, _ = objective(TokenTerms(logp=logp, old_logp=logp.detach(), mask=mask, advantages=per_token),
                        dataclasses.replace(algo, lp_reg_coef=0.0), norms)
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, -per_token * mask / 5)

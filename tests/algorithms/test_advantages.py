"""Advantages (baseline × scale × sign weights): hand values, Bessel-corrected std, exact zeros for tied groups."""

from __future__ import annotations

import math

import pytest
import torch

from mmrl.algorithms import BASELINES, SCALES, advantages


def group_norm(r, *, group_size, eps=1e-6):
    return advantages(r, group_size=group_size, eps=eps)  # the defaults: group_mean + group_std (GRPO)


def group_center(r, *, group_size, eps=1e-6):
    return advantages(r, group_size=group_size, scale="none")  # Dr. GRPO


def test_registered():
    shipped = [n for n in BASELINES.names() if not n.startswith("test_")]  # the learning test adds a control
    assert shipped == ["group_mean", "leave_one_out", "none", "sign", "virtual_max"]
    assert SCALES.names() == ["batch_std", "group_std", "none"]


def test_group_norm_g2_hand_values():
    # groups [1, 0] and [0, 1]: mean ½, sample std √(2·¼ / 1) = √½ → Â = ±½ / √½ = ±√½
    adv = group_norm(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64), group_size=2, eps=0.0)
    s = math.sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([s, -s, -s, s], dtype=torch.float64))


def test_group_norm_g4_hand_values_bessel():
    # one group [1, 0, 0, 1]: mean ½, sample std √(4·¼ / 3) = √⅓ → Â = ±½ / √⅓ = ±√3 / 2
    # (the population std ½ would give ±1)
    adv = group_norm(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64), group_size=4, eps=0.0)
    a = math.sqrt(3) / 2
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a], dtype=torch.float64))


def test_group_norm_eps_in_denominator():
    adv = group_norm(torch.tensor([1.0, 0.0], dtype=torch.float64), group_size=2, eps=0.5)
    s = math.sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([0.5 / (s + 0.5), -0.5 / (s + 0.5)], dtype=torch.float64))


def test_group_center_hand_values():
    adv = group_center(torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0]), group_size=3)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, -2 / 3, 4 / 3, -2 / 3]))


def test_groups_are_independent_rows():
    r = torch.tensor([0.0, 1.0, 5.0, 5.0, 2.0, 4.0])
    adv = group_norm(r, group_size=2)
    assert adv.shape == (6,)
    assert adv[2] == 0 and adv[3] == 0
    torch.testing.assert_close(adv[:2], adv[4:])  # scale-invariant: [0, 1] and [2, 4] normalise alike


@pytest.mark.parametrize("fn", [group_norm, group_center])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("group_size", [2, 3, 6, 7, 16])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.3, 0.9, 1.1, 2.7])
def test_tied_group_gets_exactly_zero(fn, dtype, group_size, value):
    # 7 × 0.9 in fp32: the float mean differs from 0.9 by one rounding step; Â must still be 0 exactly.
    r = torch.cat([torch.full((group_size,), value, dtype=dtype), torch.arange(group_size, dtype=dtype)])
    adv = fn(r, group_size=group_size)
    assert torch.equal(adv[:group_size], torch.zeros(group_size, dtype=dtype))
    assert adv[group_size:].abs().sum() > 0  # the untied group is unaffected


@pytest.mark.parametrize("fn", [group_norm, group_center])
def test_advantages_sum_to_zero_per_group(fn):
    torch.manual_seed(0)
    r = torch.rand(5 * 8, dtype=torch.float64)
    adv = fn(r, group_size=8).view(5, 8)
    torch.testing.assert_close(adv.sum(1), torch.zeros(5, dtype=torch.float64))


def test_group_norm_unit_sample_std():
    torch.manual_seed(0)
    adv = group_norm(torch.rand(4 * 6, dtype=torch.float64), group_size=6, eps=0.0).view(4, 6)
    torch.testing.assert_close(adv.std(1), torch.ones(4, dtype=torch.float64))


def test_leave_one_out_hand_values():
    # group [1, 0, 0, 1]: b_1 = (0 + 0 + 1) / 3 = ⅓ → Â_1 = ⅔; b_2 = (1 + 0 + 1) / 3 = ⅔ → Â_2 = −⅔
    adv = advantages(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64), group_size=4,
                     baseline="leave_one_out", scale="none")
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        advantages(torch.tensor([1.0]), group_size=1, baseline="leave_one_out")


def test_virtual_max_hand_values():
    # NGRPO: all-wrong group [0, 0, 0] + one virtual 1 → mean ¼, sample std √(3·(1/16) + 9/16)/√3 = ½
    # → Â = (0 − ¼) / ½ = −½ for every real completion (plain GRPO would give 0)
    r = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    adv = advantages(r, group_size=3, baseline="virtual_max", eps=0.0)
    torch.testing.assert_close(adv[:3], torch.full((3,), -0.5, dtype=torch.float64))
    assert torch.equal(adv[3:], torch.zeros(3, dtype=torch.float64))  # all-correct: tied with the virtual max


def test_sign_weights_w_reinforce_psr_nsr():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    common = dict(group_size=4, baseline="sign", scale="none")
    assert advantages(r, **common, pos_weight=0.1).tolist() == pytest.approx([0.1, -1.0, 0.1, -1.0])
    assert advantages(r, **common, neg_weight=0.0).abs().tolist() == [1.0, 0.0, 1.0, 0.0]  # PSR
    assert advantages(r, **common, pos_weight=0.0).tolist() == [0.0, -1.0, 0.0, -1.0]  # NSR


def test_batch_std_uses_every_reward():
    r = torch.tensor([1.0, 0.0, 3.0, 3.0], dtype=torch.float64)
    adv = advantages(r, group_size=2, scale="batch_std", eps=0.0)
    s = r.std().item()
    torch.testing.assert_close(adv, torch.tensor([0.5 / s, -0.5 / s, 0.0, 0.0], dtype=torch.float64))


def test_no_baseline_is_the_reward():
    r = torch.tensor([0.3, 0.7])
    assert torch.equal(advantages(r, group_size=2, baseline="none", scale="none"), r)


def test_long_wrong_answers_scaled_by_hand():
    from mmrl.algorithms.advantages import scale_long_negatives

    adv = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # group 2 has no correct answer
    lengths = torch.tensor([10, 30, 5, 40, 40, 40])
    out = scale_long_negatives(adv, r, lengths, group_size=3, correct_threshold=1.0, rate=0.1)
    # group 1: L̄⁺ = 10; completion 1 is 20 longer → −(1 + 1 − e^{−2}); completion 2 is shorter → unchanged
    expected = [1.0, -(2 - math.exp(-2.0)), -1.0, -1.0, -1.0, -1.0]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))
    assert torch.equal(scale_long_negatives(adv, r, lengths, group_size=3, correct_threshold=1.0, rate=0.0), adv)


def test_difficulty_kl_weights_by_hand():
    from mmrl.algorithms.advantages import difficulty_kl_weights, group_difficulty

    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # G = 4: d = 0.75 and d = 0.25
    d = group_difficulty(r, 4, 1.0)
    assert d.tolist() == [0.75] * 4 + [0.25] * 4
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0])
    w = difficulty_kl_weights(adv, d)
    hard, easy = 1 - math.exp(-math.e * 0.25), 1 - math.exp(-math.e * 0.75)
    torch.testing.assert_close(w, torch.tensor([hard, 1, 1, 1, easy, easy, easy, 1], dtype=torch.float32))
    assert difficulty_kl_weights(torch.ones(4), torch.zeros(4)).tolist() == [1.0] * 4  # all correct: d = 0


@pytest.mark.parametrize("baseline", ["group_mean", "leave_one_out", "virtual_max", "sign", "none"])
@pytest.mark.parametrize("scale", ["group_std", "batch_std", "none"])
def test_unusable_completions_are_left_out_of_every_statistic(baseline, scale):
    """An errored completion (reward 0 by convention) must not move its group's baseline or spread: the advantages
    of the others equal those of the group without it, and its own is 0. (It used to count as a reward of 0.)"""
    r = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 0.25, 1.0, 0.0], dtype=torch.float64)  # 2 groups of 4
    valid = torch.tensor([True, True, True, False, True, True, True, True])
    kw = dict(baseline=baseline, scale=scale, eps=0.0)
    got = advantages(r, group_size=4, valid=valid, **kw)
    assert got[3] == 0.0 and torch.isfinite(got).all()
    # the same statistics by hand: group 0 without its 4th completion (group size 3), group 1 as it is
    alone0 = advantages(r[:3], group_size=3, **kw)
    alone1 = advantages(r[4:], group_size=4, **kw)
    if scale == "batch_std":  # the batch std is over the 7 usable rewards, not each group's
        s_all, s0, s1 = r[valid].std(), r[:3].std(), r[4:].std()
        alone0, alone1 = alone0 * s0 / s_all, alone1 * s1 / s_all
    torch.testing.assert_close(got[:3], alone0)
    torch.testing.assert_close(got[4:], alone1)
    assert not torch.equal(advantages(r, group_size=4, **kw)[:3], got[:3]) or baseline in ("sign", "none")

"""The hf engine's sampler: Philox-4x32-10 against Random123's known answers, inverse-CDF draws against the
softmax they claim to sample, and per-row purity (a row's tokens depend on its key alone, not on the batch)."""

from __future__ import annotations

import math

import pytest
import torch

from mmrl.rollout.hf import Sampler, inverse_cdf
from mmrl.rollout.philox import philox4x32, uniforms
from mmrl.rollout.types import SamplingParams

# Random123's kat_vectors, "philox4x32 10": counter[4] key[2] -> output[4]
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_matches_random123_known_answers(counter, key, expected):
    words = lambda v: [torch.tensor(x, dtype=torch.int64) for x in v]  # noqa: E731
    assert [int(w) for w in philox4x32(words(counter), words(key))] == list(expected)


def test_uniforms_are_uniform_independent_and_keyed():
    u = uniforms(torch.tensor([1, 2, 2**62 + 7]), 20000)  # [3, T]
    assert u.dtype == torch.float64 and bool((u >= 0).all() and (u < 1).all())
    for row in u:  # mean 1/2 and variance 1/12 within 5 standard errors; lag-1 correlation ≈ 0
        assert abs(float(row.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / len(row))
        assert abs(float(row.var()) - 1 / 12) < 0.005
        assert abs(float(torch.corrcoef(torch.stack([row[:-1], row[1:]]))[0, 1])) < 0.03
    assert not torch.equal(u[0], u[1])
    assert torch.equal(uniforms(torch.tensor([2]), 5)[0], u[1, :5]), "a row's numbers depend on its key alone"
    assert not torch.equal(uniforms(torch.tensor([2]), 5, stream=1)[0], u[1, :5])


def test_inverse_cdf_samples_the_softmax():
    """Frequencies of 200k draws from one distribution (with zero-probability ids) match exp(logp) (chi-square)."""
    logits = torch.tensor([2.0, -float("inf"), 0.5, 0.0, -1.0, -float("inf"), 1.0, -3.0])
    logp = torch.log_softmax(logits, -1)
    n = 200_000
    u = uniforms(torch.arange(n), 1)[:, 0]  # one draw per key
    picks, total = inverse_cdf(logp.exp().expand(n, -1) * 3.0, u)  # unnormalised weights
    assert torch.allclose(total, torch.full((n,), 3.0, dtype=torch.float64))
    counts = torch.bincount(picks, minlength=len(logits)).double()
    p = logp.exp().double()
    assert counts[p == 0].sum() == 0, "an id of probability 0 was drawn"
    chi2 = float(((counts - n * p)[p > 0] ** 2 / (n * p[p > 0])).sum())
    assert chi2 < 22.5, chi2  # 5 degrees of freedom: p ≈ 0.0004


def test_inverse_cdf_across_blocks_matches_a_flat_cumulative_sum():
    """The two-level draw picks what a plain float64 cumulative sum over the whole row picks (V spans several
    blocks and a partial one)."""
    from mmrl.rollout.hf import BLOCK

    g = torch.Generator().manual_seed(3)
    w = torch.rand(6, 3 * BLOCK + 123, generator=g) ** 8  # peaked, with many near-zero weights
    w[1, : 2 * BLOCK] = 0.0  # whole empty blocks
    w[2, -5:] = 0.0
    u = uniforms(torch.arange(6), 50).T.contiguous()  # [50, 6]: 50 draws per row
    for k in range(50):
        picks, _ = inverse_cdf(w, u[k])
        cdf = w.double().cumsum(-1)
        flat = torch.searchsorted(cdf, (u[k] * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        assert torch.equal(picks, flat.clamp(max=w.shape[1] - 1)), k
        assert bool((w.gather(1, picks[:, None]) > 0).all())


def test_the_flat_and_two_level_draws_agree():
    """Below `FLAT` columns the draw is one float64 cumulative sum, above it two levels: on the same weights (just
    under the threshold, so both paths can run) they pick the same ids, empty stretches and zero edges included."""
    from mmrl.rollout.hf import FLAT, _two_level

    g = torch.Generator().manual_seed(5)
    w = torch.rand(8, FLAT, generator=g) ** 8
    w[1, :1500] = 0.0
    w[2, -7:] = 0.0
    w[3, 1:] = 0.0  # one possible id, the first
    u = uniforms(torch.arange(8), 40).T.contiguous()  # [40, 8]
    for k in range(40):
        flat, total = inverse_cdf(w, u[k])
        blocks, total2 = _two_level(w, u[k])
        assert torch.equal(flat, blocks), k
        assert torch.allclose(total, total2, rtol=1e-6)
        assert bool((w.gather(1, flat[:, None]) > 0).all())
    assert (inverse_cdf(w, u[0])[0][3] == 0).item()


def test_inverse_cdf_edges_never_pick_an_impossible_id():
    logp = torch.log_softmax(torch.tensor([[0.0, 0.0, -float("inf")], [-float("inf"), 3.0, -float("inf")]]), -1)
    for u in (0.0, 0.5, 1.0 - 2**-53):
        picks, _ = inverse_cdf(logp.exp(), torch.full((2,), u, dtype=torch.float64))
        assert torch.isfinite(logp.gather(1, picks[:, None])).all(), (u, picks)


def test_sampler_rows_depend_on_their_keys_not_the_batch():
    """The same row key at the same position draws the same token whatever the other rows are."""
    torch.manual_seed(0)
    scores = torch.randn(4, 50)
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=3)
    prompt = torch.zeros(4, 5, dtype=torch.long)
    full = Sampler(params, [11, 12, 13, 14], [3], 5, torch.device("cpu"))
    picks = full(prompt, scores).argmax(-1)
    alone = Sampler(params, [13], [3], 5, torch.device("cpu"))
    assert int(alone(prompt[2:3], scores[2:3]).argmax(-1)) == int(picks[2])
    assert int(picks.eq(3).sum()) == 0, "a suppressed id was drawn"
    later = full(torch.zeros(4, 6, dtype=torch.long), scores).argmax(-1)  # completion position 1
    assert int(alone(torch.zeros(1, 6, dtype=torch.long), scores[2:3]).argmax(-1)) == int(later[2])
    assert torch.equal(full.u[:, 1], uniforms(torch.tensor([11, 12, 13, 14]), 3)[:, 1])
    assert bool((full.logprobs[0] > -float("inf")).all() and (full.logprobs[0] <= 0).all())


def _truncated_reference(scores: torch.Tensor, temperature: float, top_k: int, top_p: float, banned: list[int]):
    """The distribution the sampler must draw from, built by hand: banned ids out, ÷ T, the top k, then the
    smallest prefix (by probability) whose mass before each kept token is ≤ top_p; log-softmax over what is left."""
    s = scores.clone().double()
    s[:, banned] = -float("inf")
    s = s / temperature
    kth = s.topk(top_k, dim=-1).values[:, -1:]
    s = s.masked_fill(s < kth, -float("inf"))
    p = s.softmax(-1)
    sp, order = p.sort(dim=-1, descending=True)
    drop_sorted = (sp.cumsum(-1) - sp) > top_p
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return s.masked_fill(drop, -float("inf")).log_softmax(-1)


def test_top_k_top_p_sampling_draws_from_the_truncated_softmax_and_records_its_log_probs():
    """Temperature, top-k and top-p on the hf path: every draw lies in the truncated support, the recorded
    log-prob is the truncated distribution's (what TIS and the log-prob gap compare against), and over 20,000 keys
    one row's draws follow it (χ²). The banned id has the highest score, so drawing it would show."""
    torch.manual_seed(1)
    scores = torch.randn(1, 50) * 2
    scores[0, 3] = 50.0  # a suppressed id (e.g. a vision token) that would win every draw
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=1)
    ref = _truncated_reference(scores, 0.7, 20, 0.9, [3])[0]  # [V]
    n = 20_000
    sampler = Sampler(params, list(range(n)), [3], 5, torch.device("cpu"))
    picks = sampler(torch.zeros(n, 5, dtype=torch.long), scores.expand(n, -1)).argmax(-1)
    assert torch.isfinite(ref[picks]).all(), "a draw outside the truncated support (or the banned id)"
    torch.testing.assert_close(sampler.logprobs[0], ref[picks].float(), atol=1e-5, rtol=0)
    support = torch.isfinite(ref).nonzero().squeeze(1)
    assert 1 < len(support) < 20  # top-p cut inside the top 20
    counts = torch.bincount(picks, minlength=50)[support].double()
    expected = ref[support].exp() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 3 * len(support) + 30, (chi2, len(support))  # far in the tail: p < 1e-6 for ≤ 19 degrees of freedom

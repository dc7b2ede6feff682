"""`token_logprobs` (default backend, and the checkpoint backend) against the plain `naive_token_logprobs`
reference: values, entropy, gradients; `minp_log_mass` against the full distribution."""

from __future__ import annotations

import pytest
import torch

from mmrl.kernels import naive_token_logprobs, token_logprobs
from mmrl.kernels.logprobs import IGNORE

N, H, V = 37, 16, 53  # odd N, not a multiple of any chunk size below


def make(dtype, seed=0, n=N, masked=(3, 17, 36)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) * 0.5
    targets = torch.randint(0, V, (n,), generator=g)
    targets[list(masked)] = IGNORE
    return hidden, weight, targets


def run(fn, hidden, weight, targets, **kw):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    logp, ent = fn(h, w, targets, with_entropy=True, **kw)
    g = torch.Generator().manual_seed(1)  # arbitrary upstream gradients for both outputs
    up_lp = torch.randn(logp.shape, generator=g, dtype=torch.float64).to(logp.dtype)
    up_ent = torch.randn(ent.shape, generator=g, dtype=torch.float64).to(ent.dtype)
    ((logp * up_lp).sum() + (ent * up_ent).sum()).backward()
    return logp.detach(), ent.detach(), h.grad, w.grad


def rel_close(actual, expected, rtol):
    err = (actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


@pytest.mark.parametrize(
    ("dtype", "atol", "grad_rtol"), [(torch.float64, 1e-10, 1e-10), (torch.float32, 1e-5, 1e-4)]
)
@pytest.mark.parametrize("chunk_size", [1, 8, 36])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("backend", ["auto", "checkpoint"])
def test_chunked_matches_reference(dtype, atol, grad_rtol, chunk_size, temperature, backend):
    hidden, weight, targets = make(dtype)
    ref = run(naive_token_logprobs, hidden, weight, targets, temperature=temperature)
    out = run(token_logprobs, hidden, weight, targets, temperature=temperature, chunk_size=chunk_size, backend=backend)
    assert out[0].dtype == out[1].dtype == dtype  # fp32 out for fp32 in, fp64 for fp64
    torch.testing.assert_close(out[0], ref[0], atol=atol, rtol=0)  # log-probs
    torch.testing.assert_close(out[1], ref[1], atol=atol, rtol=0)  # entropy
    rel_close(out[2], ref[2], grad_rtol)  # ∂/∂hidden
    rel_close(out[3], ref[3], grad_rtol)  # ∂/∂weight


def test_fp64_reference_against_fp32_chunked():
    hidden, weight, targets = make(torch.float64)
    ref = run(naive_token_logprobs, hidden, weight, targets, temperature=0.7)
    out = run(token_logprobs, hidden.float(), weight.float(), targets, temperature=0.7, chunk_size=5)
    torch.testing.assert_close(out[0].double(), ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1].double(), ref[1], atol=1e-5, rtol=0)
    rel_close(out[2].double(), ref[2], 1e-4)
    rel_close(out[3].double(), ref[3], 1e-4)


def test_reference_is_log_softmax_gather():
    hidden, weight, targets = make(torch.float64, masked=())
    logp, ent = naive_token_logprobs(hidden, weight, targets, temperature=2.0, with_entropy=True)
    logits = hidden @ weight.T / 2.0
    expected = torch.log_softmax(logits, -1)[torch.arange(N), targets]
    torch.testing.assert_close(logp, expected)
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(ent, -(probs * probs.log()).sum(-1))
    assert (logp <= 0).all() and (ent >= 0).all() and (ent <= torch.log(torch.tensor(float(V)))).all()


@pytest.mark.parametrize("chunk_size", [4, 1024])
def test_masked_targets(chunk_size):
    masked = (0, 5, 36)
    hidden, weight, targets = make(torch.float32, masked=masked)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    logp, ent = token_logprobs(h, w, targets, chunk_size=chunk_size, with_entropy=True)
    assert torch.equal(logp[list(masked)], torch.zeros(3)) and torch.equal(ent[list(masked)], torch.zeros(3))
    (logp.sum() + ent.sum()).backward()
    assert torch.equal(h.grad[list(masked)], torch.zeros(3, H))  # no gradient from ignored rows
    # … and the weight gradient equals the one computed without those rows at all
    keep = [i for i in range(N) if i not in masked]
    w2 = weight.clone().requires_grad_()
    lp2, ent2 = token_logprobs(hidden[keep], w2, targets[keep], chunk_size=chunk_size, with_entropy=True)
    (lp2.sum() + ent2.sum()).backward()
    torch.testing.assert_close(w.grad, w2.grad, atol=1e-5, rtol=1e-5)


def test_all_masked():
    hidden, weight, _ = make(torch.float32)
    targets = torch.full((N,), IGNORE)
    logp, ent = token_logprobs(hidden, weight, targets, chunk_size=8, with_entropy=True)
    assert torch.equal(logp, torch.zeros(N)) and torch.equal(ent, torch.zeros(N))


def test_entropy_optional():
    hidden, weight, targets = make(torch.float32)
    for chunk_size in (4, 1024):
        logp, ent = token_logprobs(hidden, weight, targets, chunk_size=chunk_size)
        assert ent is None and logp.shape == (N,) and logp.dtype == torch.float32


def test_bfloat16_inputs_give_fp32_close_to_reference():
    hidden, weight, targets = make(torch.float32)
    ref, _ = naive_token_logprobs(hidden, weight, targets)
    out, _ = token_logprobs(hidden.bfloat16(), weight.bfloat16(), targets, chunk_size=8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.15, rtol=0.02)


def test_minp_log_mass_matches_the_full_distribution():
    from mmrl.kernels import minp_log_mass

    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, generator=g, dtype=torch.float64)
    w = torch.randn(50, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 50, (37,), generator=g)
    t[5] = -100
    for kappa, temp in ((0.02, 1.0), (0.5, 0.7), (1.0, 1.3)):
        log_mass, kept = minp_log_mass(h, w, t, kappa=kappa, temperature=temp, chunk_size=8)
        p = torch.softmax(h @ w.T / temp, dim=-1)
        inside = p >= kappa * p.max(dim=-1, keepdim=True).values
        expected = torch.log((p * inside).sum(-1))
        expected[5] = 0.0
        torch.testing.assert_close(log_mass, expected)
        hit = inside.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
        hit[5] = False
        assert torch.equal(kept, hit)
    with pytest.raises(ValueError, match="kappa"):
        minp_log_mass(h, w, t, kappa=0.0)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_renormalize_without_matches_masked_logits(dtype, atol):
    """Log-probs and entropies of the softmax without some ids (what a sampler that never samples them draws from),
    from the full-vocabulary kernel outputs, equal masking those logits to −inf first — values and gradients."""
    from mmrl.kernels.logprobs import renormalize_without

    g = torch.Generator().manual_seed(0)
    h = (torch.randn(13, 16, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    w = torch.randn(50, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    excluded = torch.tensor([2, 7, 9])
    t = torch.randint(0, 50, (13,), generator=g)
    t[torch.isin(t, excluded)] = 5
    t[3] = IGNORE
    lp, ent = token_logprobs(h, w, t, temperature=0.7, with_entropy=True, backend="torch")
    got, got_ent = renormalize_without(lp, ent, h, w, t, excluded, temperature=0.7)
    logits = ((h @ w.T) / 0.7).index_fill(1, excluded, -float("inf"))
    ref_lp = torch.log_softmax(logits, -1)
    valid = t != IGNORE
    zero = torch.zeros(13, dtype=dtype)
    ref = torch.where(valid, ref_lp.gather(1, t.clamp(min=0)[:, None]).squeeze(1), zero)
    ref_ent = torch.where(valid, -(ref_lp.exp() * ref_lp.nan_to_num(neginf=0.0)).sum(-1), zero)
    assert torch.allclose(got, ref, atol=atol) and torch.allclose(got_ent, ref_ent, atol=atol)
    assert float((got - lp).abs().max()) > 1e-4, "the excluded ids carried mass: renormalising must change logp"
    up = torch.arange(13, dtype=dtype)
    grads = torch.autograd.grad((got * up).sum() + got_ent.sum(), (h, w))
    ref_grads = torch.autograd.grad((ref * up).sum() + ref_ent.sum(), (h, w))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=atol * 20), float((a - b).abs().max())

"""The fused autograd Function ("torch" backend) against the plain `naive_token_logprobs` reference: values, entropy,
both gradients, per dtype, on odd shapes with row chunks and vocab blocks that do not divide N or V; memory shape;
the backend switch."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmrl.kernels import fused_token_logprobs, naive_token_logprobs, token_logprobs
from mmrl.kernels.logprobs import IGNORE, resolve_backend

N, H, V = 37, 16, 53  # odd N and V: no chunk or block size below divides them
MASKED = (3, 17, 36)


def make(dtype, seed=0, n=N, h=H, v=V, masked=MASKED):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(masked)] = IGNORE
    return hidden, weight, targets


def run(fn, hidden, weight, targets, use=("lp", "ent"), **kw):
    """Outputs and gradients of Σ a·logp + Σ b·ent (only the terms in `use`) for fixed random a, b."""
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    logp, ent = fn(h, w, targets, **kw)
    g = torch.Generator().manual_seed(1)
    up_lp = torch.randn(logp.shape, generator=g, dtype=torch.float64).to(logp.dtype)
    up_ent = torch.randn(logp.shape, generator=g, dtype=torch.float64).to(logp.dtype)
    loss = (logp * up_lp).sum() * ("lp" in use) + ((ent * up_ent).sum() if "ent" in use else 0)
    loss.backward()
    return logp.detach(), (None if ent is None else ent.detach()), h.grad, w.grad


def rel_err(actual, expected):
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp(min=1e-12)).item()


def assert_parity(out, ref, atol, grad_rtol):
    torch.testing.assert_close(out[0], ref[0], atol=atol, rtol=0)  # log-probs
    if ref[1] is not None:
        torch.testing.assert_close(out[1], ref[1], atol=atol, rtol=0)  # entropy
    assert rel_err(out[2], ref[2]) <= grad_rtol, "∂/∂hidden"
    assert rel_err(out[3], ref[3]) <= grad_rtol, "∂/∂weight"


@pytest.mark.parametrize(("dtype", "atol", "grad_rtol"), [(torch.float64, 1e-10, 1e-10), (torch.float32, 1e-5, 1e-4)])
@pytest.mark.parametrize(("chunk_size", "vocab_block"), [(1, 7), (8, 16), (36, 1024), (1024, 52)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_reference_with_both_outputs_in_the_loss(dtype, atol, grad_rtol, chunk_size, vocab_block, temperature):
    hidden, weight, targets = make(dtype)
    kw = {"temperature": temperature, "with_entropy": True}
    ref = run(naive_token_logprobs, hidden, weight, targets, **kw)
    out = run(fused_token_logprobs, hidden, weight, targets, chunk_size=chunk_size, vocab_block=vocab_block, **kw)
    assert out[0].dtype == out[1].dtype == dtype
    assert_parity(out, ref, atol, grad_rtol)


@pytest.mark.parametrize(
    ("with_entropy", "use"), [(False, ("lp",)), (True, ("lp",)), (True, ("ent",))], ids=["lp", "lp-of-both", "ent-only"]
)
def test_one_output_in_the_loss(with_entropy, use):
    hidden, weight, targets = make(torch.float32, seed=2)
    kw = {"temperature": 0.7, "with_entropy": with_entropy, "use": use}
    ref = run(naive_token_logprobs, hidden, weight, targets, **kw)
    out = run(fused_token_logprobs, hidden, weight, targets, chunk_size=8, vocab_block=16, **kw)
    assert (out[1] is None) == (not with_entropy)
    assert_parity(out, ref, 1e-5, 1e-4)


def test_masked_rows_give_zero_and_no_gradient():
    hidden, weight, targets = make(torch.float32)
    logp, ent, dh, dw = run(fused_token_logprobs, hidden, weight, targets, with_entropy=True, chunk_size=4,
                            vocab_block=16)
    m = list(MASKED)
    assert torch.equal(logp[m], torch.zeros(3)) and torch.equal(ent[m], torch.zeros(3))
    assert torch.equal(dh[m], torch.zeros(3, H))
    keep = [i for i in range(N) if i not in MASKED]  # dW equals the one computed without those rows at all
    g = torch.Generator().manual_seed(1)
    up_lp, up_ent = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    w2 = weight.clone().requires_grad_()
    lp2, ent2 = fused_token_logprobs(hidden[keep], w2, targets[keep], with_entropy=True, chunk_size=4, vocab_block=16)
    ((lp2 * up_lp[keep].float()).sum() + (ent2 * up_ent[keep].float()).sum()).backward()
    torch.testing.assert_close(dw, w2.grad, atol=1e-6, rtol=1e-5)


def test_all_rows_masked():
    hidden, weight, _ = make(torch.float32)
    targets = torch.full((N,), IGNORE)
    logp, ent, dh, dw = run(fused_token_logprobs, hidden, weight, targets, with_entropy=True)
    assert torch.equal(logp, torch.zeros(N)) and torch.equal(ent, torch.zeros(N))
    assert torch.equal(dh, torch.zeros(N, H)) and torch.equal(dw, torch.zeros(V, H))


def test_frozen_weight_gets_no_gradient():
    hidden, weight, targets = make(torch.float32)
    h = hidden.clone().requires_grad_()
    logp, ent = fused_token_logprobs(h, weight, targets, with_entropy=True, chunk_size=8, vocab_block=16)
    (logp.sum() + ent.sum()).backward()
    h_ref = hidden.clone().requires_grad_()
    lp_ref, ent_ref = naive_token_logprobs(h_ref, weight, targets, with_entropy=True)
    (lp_ref.sum() + ent_ref.sum()).backward()
    assert weight.grad is None
    assert rel_err(h.grad, h_ref.grad) <= 1e-4


def test_bf16_error_at_most_twice_the_reference_in_bf16():
    """bf16 inputs: |fused(bf16) − naive(fp32)| ≤ 2·|naive(bf16) − naive(fp32)| + floor, for every output and
    gradient; the fp32 reference runs on the same (bf16-representable) values."""
    hidden, weight, targets = make(torch.bfloat16, n=67, h=64, v=301, masked=(5,))
    kw = {"temperature": 0.7, "with_entropy": True}
    exact = run(naive_token_logprobs, hidden.float(), weight.float(), targets, **kw)
    ref16 = run(naive_token_logprobs, hidden, weight, targets, **kw)
    out16 = run(fused_token_logprobs, hidden, weight, targets, chunk_size=16, vocab_block=64, **kw)
    assert out16[0].dtype == torch.float32 and out16[2].dtype == out16[3].dtype == torch.bfloat16
    for name, o, r, e in zip(("logp", "ent", "dh", "dW"), out16, ref16, exact):
        err_fused, err_ref = rel_err(o, e), rel_err(r, e)
        assert err_fused <= 2 * err_ref + 1e-6, f"{name}: fused {err_fused:.3g} vs reference-in-bf16 {err_ref:.3g}"


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("fn", [fused_token_logprobs, naive_token_logprobs], ids=["fused", "naive (control)"])
def test_no_n_by_v_tensor_is_saved_or_created(fn):
    """No tensor saved for backward has N·V elements, and no op creates one (forward or backward); the reference
    does both, which shows the check can fail."""
    hidden, weight, targets = make(torch.float32)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    saved = []
    kw = {"chunk_size": 8, "vocab_block": 16} if fn is fused_token_logprobs else {}
    with _LargestTensor() as mode:
        with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
            logp, ent = fn(h, w, targets, with_entropy=True, **kw)
        (logp.sum() + ent.sum()).backward()
    too_big = N * V
    if fn is fused_token_logprobs:
        assert saved and max(saved) < too_big and mode.largest < too_big, (saved, mode.largest)
    else:
        assert too_big in saved and mode.largest >= too_big


def test_backend_switch():
    hidden, weight, targets = make(torch.float32)
    assert resolve_backend("auto", hidden) == "torch"  # CPU tensors
    ref = naive_token_logprobs(hidden, weight, targets, temperature=0.7, with_entropy=True)
    for backend in ("auto", "torch", "naive", "checkpoint"):
        out = token_logprobs(hidden, weight, targets, temperature=0.7, with_entropy=True, chunk_size=8, backend=backend)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"'checkpoint', 'naive', 'torch', 'triton'.*did you mean 'triton'"):
        token_logprobs(hidden, weight, targets, backend="trition")


def test_missing_triton_names_the_install_command(monkeypatch):
    from mmrl.kernels import triton_logprobs

    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "mmrl.kernels._triton_kernels", raising=False)
    triton_logprobs.kernels.cache_clear()
    try:
        assert not triton_logprobs.available()
        hidden, weight, targets = make(torch.float32)
        with pytest.raises(ImportError, match="pip install triton"):
            token_logprobs(hidden, weight, targets, backend="triton")
    finally:
        triton_logprobs.kernels.cache_clear()


def test_autocast_and_mixed_dtypes():
    """Under bf16 autocast the policy's hidden states arrive in bf16 beside an fp32 lm_head: the Function turns
    autocast off inside and multiplies in fp32, so it matches the fp32 reference on the same values."""
    hidden, weight, targets = make(torch.float32)
    h = hidden.bfloat16().requires_grad_()
    w = weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, ent = fused_token_logprobs(h, w, targets, with_entropy=True, chunk_size=8, vocab_block=16)
    (logp.sum() + ent.sum()).backward()
    ref = naive_token_logprobs(hidden.bfloat16().float(), weight, targets, with_entropy=True)
    assert logp.dtype == torch.float32 and h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    torch.testing.assert_close(logp, ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref[1], atol=1e-5, rtol=0)

"""Fused linear → token log-prob / entropy as one `torch.autograd.Function` (the "torch" backend).

Shapes: hidden [N, H], weight [V, H], targets [N] (−100 = ignored). Per row n, with z = h Wᵀ / T:

    lse_n = log Σ_v exp z_nv        logp_n = z_n,t − lse_n        ent_n = lse_n − Σ_v p_nv z_nv   (p = softmax z)
    ∂logp_n / ∂z_nv = 1[v = t_n] − p_nv          ∂ent_n / ∂z_nv = −p_nv (log p_nv + ent_n)

so −dz = p·(g_lp + g_ent·(log p + ent)) − g_lp·onehot, dh = dz W / T, dW = dzᵀ h / T.

The logits are never held whole: both passes walk [chunk_size, vocab_block] tiles (vocab blocks outer, row chunks
inner, so each weight block is read once per pass and stays in cache). The forward keeps an online log-sum-exp per
row — running max m, Σ exp(z − m) and Σ exp(z − m)(z − m), rescaled when m grows (Milakov & Gimelshein 2018,
"Online normalizer calculation for softmax", arXiv:1805.02867) — and saves only lse [N] and ent [N]. The backward
recomputes each tile's logits (one extra matmul per tile, 4 GEMMs in all against the reference's 3), forms −dz in
place and accumulates dh [N, H] and dW [V, H] in fp32. Prior art: Liger-Kernel's chunked fused linear
cross-entropy (Hsu et al. 2024, "Liger Kernel: Efficient Triton Kernels for LLM Training", arXiv:2410.10989), which
folds the gradient into the forward because its loss is the last op; a log-prob feeding an arbitrary RL loss is not,
and storing dz would be [N, V] again — hence the recomputation.

Differs from: `naive_token_logprobs` (the plain reference) only by float rounding; memory O(chunk·block), not O(N·V).
Dtypes: bf16/fp16 inputs are multiplied with fp32 accumulation and an fp32 result (CUDA: `out_dtype` GEMM; CPU:
operands upcast per tile — bf16·bf16 products are exact in fp32), softmax math and gradient sums in fp32; fp64
inputs compute in fp64. Rows with target −100 are dropped before the loops (they cost nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

IGNORE = -100
VOCAB_BLOCK = 4096  # columns per tile: a [1024, 4096] fp32 tile (16 MiB) stays in a CPU's last-level cache


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float, first: bool) -> torch.Tensor:
    """out ← (0 if first else out) + alpha · a b in out's dtype, whatever the operands' dtypes (see module doc)."""
    beta = 0 if first else 1
    if a.dtype == b.dtype == out.dtype:
        return out.addmm_(a, b, beta=beta, alpha=alpha)
    if out.is_cuda and a.dtype == b.dtype:
        prod = torch.mm(a, b, out_dtype=out.dtype)  # low-precision GEMM, fp32 result
        return torch.mul(prod, alpha, out=out) if first else out.add_(prod, alpha=alpha)
    return out.addmm_(a.to(out.dtype), b.to(out.dtype), beta=beta, alpha=alpha)


class Tiles:
    """Reusable [c, b] tile buffers, allocated on first use so the loops never allocate (a large fresh allocation
    costs page faults on CPU). `get(i, …)` is in the compute dtype; `input_dtype_buffer` in the input dtype."""

    def __init__(self, rows: int, cols: int, dtype: torch.dtype, input_dtype: torch.dtype, device):
        self.size, self.dtype, self.input_dtype, self.device = rows * cols, dtype, input_dtype, device
        self.bufs: dict[object, torch.Tensor] = {}

    def _view(self, key, dtype, rows: int, cols: int) -> torch.Tensor:
        if key not in self.bufs:
            self.bufs[key] = torch.empty(self.size, dtype=dtype, device=self.device)  # [c·b]
        return self.bufs[key][: rows * cols].view(rows, cols)  # [c, b], contiguous

    def get(self, i: int, rows: int, cols: int) -> torch.Tensor:
        return self._view(i, self.dtype, rows, cols)

    def input_dtype_buffer(self, rows: int, cols: int) -> torch.Tensor:
        return self._view("input", self.input_dtype, rows, cols)

    def logits(self, h_c: torch.Tensor, w_b: torch.Tensor, inv_t: float) -> torch.Tensor:
        """z = h_c w_bᵀ / T in buffer 0.  # [c, b]"""
        return mm_into(self.get(0, h_c.shape[0], w_b.shape[0]), h_c, w_b.T, inv_t, first=True)


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _target_cells(t_c: torch.Tensor, v0: int, v1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the tile [c, v1−v0] holding each row's target, for the rows whose target is in [v0, v1)."""
    rows = ((t_c >= v0) & (t_c < v1)).nonzero().squeeze(1)  # [k]
    return rows, t_c[rows] - v0  # [k], [k]


def fused_forward(h, w, t, inv_t: float, with_entropy: bool, chunk_size: int, block: int = VOCAB_BLOCK):
    """(lse [n], target logit [n], ent [n] or None) for valid rows (all t ≥ 0), by online softmax over tiles."""
    n, dt, dev = h.shape[0], compute_dtype(h.dtype), h.device
    m = torch.full((n,), -float("inf"), dtype=dt, device=dev)  # running max  [n]
    s = torch.zeros(n, dtype=dt, device=dev)  # Σ exp(z − m)  [n]
    a = torch.zeros(n, dtype=dt, device=dev)  # Σ exp(z − m)(z − m)  [n] (entropy only)
    zt = torch.zeros(n, dtype=dt, device=dev)  # target logit  [n]
    tiles = Tiles(min(chunk_size, n), min(block, w.shape[0]), dt, h.dtype, dev)
    for v0, v1 in _spans(w.shape[0], block):
        w_b = w[v0:v1]  # [b, H]
        for r0, r1 in _spans(n, chunk_size):
            z = tiles.logits(h[r0:r1], w_b, inv_t)  # [c, b]
            rows, cols = _target_cells(t[r0:r1], v0, v1)
            zt[r0 + rows] = z[rows, cols]
            m_old, s_old = m[r0:r1], s[r0:r1]  # views [c]
            m_new = torch.maximum(m_old, z.amax(dim=1))  # [c]
            scale = torch.exp(m_old - m_new)  # [c]; 0 on the first block
            z.sub_(m_new[:, None])  # z − m  [c, b]
            if with_entropy:
                e = torch.exp(z, out=tiles.get(1, *z.shape))  # [c, b]
                shift = torch.where(s_old > 0, m_old - m_new, 0.0) * s_old  # re-centre Σ e·(z − m) on the new max
                dots = torch.bmm(e[:, None], z[:, :, None]).view(-1)  # Σ_v e·(z − m)  [c], no [c, b] temporary
                a[r0:r1] = scale * (a[r0:r1] + shift) + dots
            else:
                e = z.exp_()
            s[r0:r1] = s_old * scale + e.sum(dim=1)
            m[r0:r1] = m_new
    lse = m + torch.log(s)  # [n]
    return lse, zt, (torch.log(s) - a / s if with_entropy else None)  # ent = log s − Σ p (z − m)


def torch_neg_dz(tiles, h_c, w_b, t_c, v0, inv_t, lse_c, coef_c, g_lp_c, g_ent_c) -> torch.Tensor:
    """−dz for one tile [c, b]: p·(g_ent·log p + coef) − g_lp·onehot, with coef = g_lp + g_ent·ent (None = 0)."""
    z = tiles.logits(h_c, w_b, inv_t).sub_(lse_c[:, None])  # log p  [c, b]
    if g_ent_c is not None:
        p = torch.exp(z, out=tiles.get(1, *z.shape))  # [c, b]
        negdz = z.mul_(g_ent_c[:, None]).add_(coef_c[:, None]).mul_(p)  # [c, b]
    else:
        negdz = z.exp_().mul_(g_lp_c[:, None])  # [c, b]
    if g_lp_c is not None:
        rows, cols = _target_cells(t_c, v0, v0 + z.shape[1])
        negdz[rows, cols] -= g_lp_c[rows]
    return negdz


def fused_backward(
    h, w, t, inv_t: float, lse, ent, g_lp, g_ent, chunk_size: int, block: int = VOCAB_BLOCK, *,
    neg_dz=torch_neg_dz, need_dh: bool = True, need_dw: bool = True,
):
    """(dh [n, H] in the compute dtype, dW [V, H] in w's dtype; None where not needed) for upstream gradients
    g_lp [n], g_ent [n] (either may be None). `neg_dz` makes one tile's −dz (torch ops or a Triton kernel)."""
    n, dt, dev = h.shape[0], compute_dtype(h.dtype), h.device
    tiles = Tiles(min(chunk_size, n), min(block, w.shape[0]), dt, h.dtype, dev)
    dh = torch.empty(n, h.shape[1], dtype=dt, device=dev) if need_dh else None  # [n, H]
    dw = torch.empty(w.shape, dtype=w.dtype, device=dev) if need_dw else None  # [V, H]
    acc = None  # [b, H] fp32 accumulator when dW itself is low precision
    if need_dw and dt != w.dtype:
        acc = torch.empty(min(block, w.shape[0]), w.shape[1], dtype=dt, device=dev)
    coef = None if g_ent is None else (g_ent * ent if g_lp is None else g_lp + g_ent * ent)  # [n]
    for i, (v0, v1) in enumerate(_spans(w.shape[0], block)):
        w_b = w[v0:v1]  # [b, H]
        dw_b = None if dw is None else (dw[v0:v1] if acc is None else acc[: v1 - v0])  # [b, H]
        for j, (r0, r1) in enumerate(_spans(n, chunk_size)):
            h_c = h[r0:r1]  # [c, H]
            coef_c, g_lp_c, g_ent_c = (None if x is None else x[r0:r1] for x in (coef, g_lp, g_ent))  # [c]
            negdz = neg_dz(tiles, h_c, w_b, t[r0:r1], v0, inv_t, lse[r0:r1], coef_c, g_lp_c, g_ent_c)  # [c, b]
            if dh is not None:
                mm_into(dh[r0:r1], negdz, w_b, -inv_t, first=i == 0)  # dh += dz W / T
            if dw_b is not None:
                mm_into(dw_b, negdz.T, h_c, -inv_t, first=j == 0)  # dW += dzᵀ h / T
        if acc is not None:
            dw[v0:v1].copy_(dw_b)
    return dh, dw


class Impl(NamedTuple):
    """A backend's two passes: `forward(h, w, t, inv_t, with_entropy, chunk_size, block)` → (lse, target logit,
    ent | None) over valid rows, and `neg_dz` (signature of `torch_neg_dz`) for one backward tile."""

    forward: Callable
    neg_dz: Callable


TORCH_IMPL = Impl(fused_forward, torch_neg_dz)


class FusedTokenLogprobs(torch.autograd.Function):
    """(hidden, weight, targets) → logp [N] (and ent [N]); saves the inputs and lse/ent [n] only, never logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy, chunk_size, vocab_block, impl):
        rows = (targets != IGNORE).nonzero().squeeze(1)  # [n] valid rows
        h, t = hidden.index_select(0, rows), targets.index_select(0, rows)  # [n, H], [n]
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are handled here (see module doc)
            lse, zt, ent = impl.forward(h, weight, t, 1.0 / temperature, with_entropy, chunk_size, vocab_block)
        zeros = torch.zeros(hidden.shape[0], dtype=compute_dtype(hidden.dtype), device=hidden.device)  # [N]
        ctx.save_for_backward(hidden, weight, rows, t, lse, ent)
        ctx.cfg = (1.0 / temperature, chunk_size, vocab_block, impl)
        ctx.set_materialize_grads(False)
        logp = zeros.index_copy(0, rows, zt - lse)  # [N]
        return (logp, zeros.index_copy(0, rows, ent)) if with_entropy else logp

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lp, g_ent=None):
        hidden, weight, rows, t, lse, ent = ctx.saved_tensors
        inv_t, chunk_size, vocab_block, impl = ctx.cfg
        need_dh, need_dw = ctx.needs_input_grad[:2]
        grad_h = torch.zeros_like(hidden) if need_dh else None  # [N, H]
        if (g_lp is None and g_ent is None) or rows.numel() == 0:
            return grad_h, (torch.zeros_like(weight) if need_dw else None), *([None] * 6)
        g_lp = None if g_lp is None else g_lp.index_select(0, rows).to(lse.dtype)  # [n]
        g_ent = None if g_ent is None else g_ent.index_select(0, rows).to(lse.dtype)  # [n]
        h = hidden.index_select(0, rows)  # [n, H]
        with torch.autocast(hidden.device.type, enabled=False):
            dh, dw = fused_backward(h, weight, t, inv_t, lse, ent, g_lp, g_ent, chunk_size, vocab_block,
                                    neg_dz=impl.neg_dz, need_dh=need_dh, need_dw=need_dw)
        if need_dh:
            grad_h.index_copy_(0, rows, dh.to(hidden.dtype))
        return grad_h, dw, *([None] * 6)


def fused_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    chunk_size: int = 1024, with_entropy: bool = False, vocab_block: int = VOCAB_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp [N], entropy [N] or None) via `FusedTokenLogprobs`; same contract as `naive_token_logprobs`."""
    out = FusedTokenLogprobs.apply(
        hidden, weight, targets, float(temperature), with_entropy, int(chunk_size), int(vocab_block), TORCH_IMPL
    )
    return (out[0], out[1]) if with_entropy else (out, None)

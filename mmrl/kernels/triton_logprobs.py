"""Triton backend of `token_logprobs` (the "triton" backend; CUDA, or CPU tensors under TRITON_INTERPRET=1).

Same math and autograd Function as `mmrl.kernels.fused` (see its docstring for the formulas), two kernels:

- forward (`lse_forward_kernel`): each program takes a block of rows and a split of the vocabulary, walks its
  vocab blocks computing logits tiles h·Wᵀ/T in registers, and keeps the online softmax statistics — running max m,
  Σ exp(z − m), Σ exp(z − m)(z − m) for the entropy, and the target logit (Milakov & Gimelshein 2018, "Online
  normalizer calculation for softmax", arXiv:1805.02867). Vocab splits (as in split-K / flash-decoding) give the
  GPU enough programs when N is small; `merge_splits` combines them in torch. No [N, V] tensor is ever written.
- backward (`neg_dz_kernel`): for each [chunk, block] tile, recompute the logits and write
  −dz = p·(g_ent·log p + g_lp + g_ent·ent) − g_lp·onehot into a tile buffer. **The two backward matmuls
  (dh += dz W / T, dW += dzᵀ h / T) then run in torch (cuBLAS) per tile** — the tile loop is `fused.fused_backward`,
  shared with the torch backend. Memory stays O(chunk · block).

Prior art: Liger-Kernel's chunked fused linear cross-entropy (Hsu et al. 2024, arXiv:2410.10989).
Dtypes: fp32, bf16, fp16 inputs (fp32 accumulation); fp64 is refused (use the torch backend). So far tested only
on CPU under the Triton interpreter, in fp32: the interpreter (numpy) mis-reads bf16 tensors, so bf16 parity is a
CUDA-only test (tests/kernels/test_triton.py), and the CUDA block sizes below are untuned defaults — not yet run
or timed on a GPU.
"""

from __future__ import annotations

import functools

import torch

from mmrl.kernels.fused import VOCAB_BLOCK, FusedTokenLogprobs, Impl


@functools.cache
def kernels():
    """The kernel module; a clear error when triton is missing."""
    try:
        from mmrl.kernels import _triton_kernels
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'triton' backend of token_logprobs needs Triton: `pip install triton` "
            "(or use backend='torch')"
        ) from err
    return _triton_kernels


def available() -> bool:
    """Whether triton imports."""
    try:
        kernels()
    except ImportError:
        return False
    return True


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _blocks(device: torch.device) -> dict[str, int]:
    """Tile sizes: tiny under the CPU interpreter (tl.dot needs ≥ 16), larger on a GPU."""
    if device.type == "cpu":
        return {"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_H": 16}
    return {"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_H": 64}


def merge_splits(m, s, a, zt):
    """Combine per-split statistics [S, n] into (lse [n], target logit [n], ent [n] or None)."""
    top = m.max(dim=0).values  # [n]
    w = torch.exp(m - top)  # [S, n]
    total = (s * w).sum(0)  # Σ exp(z − top)  [n]
    lse = top + torch.log(total)
    ent = None
    if a is not None:
        centred = (w * (a + (m - top) * s)).sum(0)  # Σ exp(z − top)(z − top)  [n]
        ent = torch.log(total) - centred / total
    return lse, zt.sum(0), ent


def triton_forward(h, w, t, inv_t: float, with_entropy: bool, chunk_size: int, block: int = VOCAB_BLOCK):
    """(lse [n], target logit [n], ent [n] or None) over valid rows (t ≥ 0); `chunk_size`, `block` unused here."""
    if h.dtype == torch.float64:
        raise ValueError("the triton backend computes in fp32; use backend='torch' for fp64 inputs")
    k, cfg = kernels(), _blocks(h.device)
    h, w, t = h.contiguous(), w.contiguous(), t.contiguous()
    n, v = h.shape[0], w.shape[0]
    row_blocks, vocab_blocks = _cdiv(n, cfg["BLOCK_N"]), _cdiv(v, cfg["BLOCK_V"])
    want = max(1, min(vocab_blocks, 1024 // row_blocks)) if h.is_cuda else min(2, vocab_blocks)
    per_split = _cdiv(vocab_blocks, want)
    splits = _cdiv(vocab_blocks, per_split)  # every split starts on a valid vocab block
    stats = torch.empty(4, splits, n, dtype=torch.float32, device=h.device)  # m, s, a, zt  [4, S, n]
    k.lse_forward_kernel[(row_blocks, splits)](
        h, w, t, stats[0], stats[1], stats[2], stats[3], n, v, h.shape[1], per_split, inv_t,
        WITH_ENT=with_entropy, **cfg,
    )
    return merge_splits(stats[0], stats[1], stats[2] if with_entropy else None, stats[3])


def triton_neg_dz(tiles, h_c, w_b, t_c, v0, inv_t, lse_c, coef_c, g_lp_c, g_ent_c) -> torch.Tensor:
    """−dz for one [c, b] tile, written by `neg_dz_kernel` into a buffer of the input dtype."""
    k, cfg = kernels(), _blocks(h_c.device)
    c, b = h_c.shape[0], w_b.shape[0]
    out = tiles.input_dtype_buffer(c, b)  # [c, b]
    dummy = lse_c  # stands in for an absent gradient (never read: HAS_LP / HAS_ENT are off)
    grid = (_cdiv(c, cfg["BLOCK_N"]), _cdiv(b, cfg["BLOCK_V"]))
    k.neg_dz_kernel[grid](
        h_c, w_b, t_c, lse_c, coef_c if coef_c is not None else dummy, g_lp_c if g_lp_c is not None else dummy,
        g_ent_c if g_ent_c is not None else dummy, out, c, b, v0, h_c.shape[1], inv_t,
        HAS_LP=g_lp_c is not None, HAS_ENT=g_ent_c is not None, **cfg,
    )
    return out


TRITON_IMPL = Impl(triton_forward, triton_neg_dz)


def triton_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    chunk_size: int = 1024, with_entropy: bool = False, vocab_block: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp [N], entropy [N] or None) with Triton kernels; same contract as `naive_token_logprobs`.
    `chunk_size` × `vocab_block` is the backward's −dz tile (in the input dtype)."""
    kernels()  # fail early, with the install hint
    out = FusedTokenLogprobs.apply(
        hidden, weight, targets, float(temperature), with_entropy, int(chunk_size), int(vocab_block), TRITON_IMPL
    )
    return (out[0], out[1]) if with_entropy else (out, None)

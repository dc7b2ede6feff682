"""Triton kernels behind `mmrl.kernels.triton_logprobs` (imports triton at module load: import it lazily).

Layouts: h [n, H] and w [V, H] row-major contiguous, t [n] int64; every kernel computes logits tiles
z = h_tile · w_tileᵀ / T with fp32 accumulation (`input_precision="ieee"`, so fp32 inputs are not rounded to tf32).
"""

import triton
import triton.language as tl


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, hidden_dim, inv_t,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """z [BLOCK_N, BLOCK_V] = h[rows] · w[cols]ᵀ / T, looping over H in BLOCK_H steps (masked edges load 0)."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    h_rows = rows.to(tl.int64)[:, None] * hidden_dim  # [BN, 1]
    w_cols = cols.to(tl.int64)[None, :] * hidden_dim  # [1, BV]
    for k0 in range(0, hidden_dim, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)  # [BH]
        k_ok = ks < hidden_dim
        hk = tl.load(h_ptr + h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BN, BH]
        wk = tl.load(w_ptr + w_cols + ks[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0)  # [BH, BV]
        acc = tl.dot(hk, wk, acc, input_precision="ieee")
    return acc * inv_t


@triton.jit
def lse_forward_kernel(h_ptr, w_ptr, t_ptr, m_ptr, s_ptr, a_ptr, zt_ptr, n_rows, n_vocab, hidden_dim,
                       blocks_per_split, inv_t, WITH_ENT: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """Program (row block i, vocab split j): online softmax statistics of rows i over split j's vocab range.

    Writes, at [j, rows]: m = max z, s = Σ exp(z − m), a = Σ exp(z − m)(z − m) (if WITH_ENT) and the target logit
    (0 when the target lies outside the split). Splits are merged in torch (`merge_splits`). The first block of a
    split always holds a valid column, so m is finite after it."""
    pid_n, split = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    row_ok = rows < n_rows
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=-1)  # [BN]
    m = tl.full([BLOCK_N], -float("inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    a = tl.zeros([BLOCK_N], dtype=tl.float32)
    zt = tl.zeros([BLOCK_N], dtype=tl.float32)
    for b in range(blocks_per_split):
        cols = (split * blocks_per_split + b) * BLOCK_V + tl.arange(0, BLOCK_V)  # [BV]
        col_ok = cols < n_vocab
        z = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, hidden_dim, inv_t, BLOCK_N, BLOCK_V, BLOCK_H)
        z = tl.where(col_ok[None, :], z, -float("inf"))  # [BN, BV]
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))  # [BN]
        scale = tl.exp(m - m_new)  # 0 on the first block
        e = tl.exp(z - m_new[:, None])  # [BN, BV]; 0 on masked columns
        if WITH_ENT:
            shift = tl.where(s > 0, m - m_new, 0.0) * s  # re-centre Σ e·(z − m) on the new max
            centred = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)  # z − m, 0 on masked columns
            a = scale * (a + shift) + tl.sum(e * centred, axis=1)
        s = s * scale + tl.sum(e, axis=1)
        m = m_new
    out = split * n_rows + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(zt_ptr + out, zt, mask=row_ok)
    if WITH_ENT:
        tl.store(a_ptr + out, a, mask=row_ok)


@triton.jit
def neg_dz_kernel(h_ptr, w_ptr, t_ptr, lse_ptr, coef_ptr, glp_ptr, gent_ptr, out_ptr, n_rows, n_cols, v0,
                  hidden_dim, inv_t, HAS_LP: tl.constexpr, HAS_ENT: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """One [BLOCK_N, BLOCK_V] block of −dz for a [n_rows, n_cols] tile whose columns start at vocab id v0:

        −dz = p·(g_ent·log p + coef) − g_lp·onehot(t),   coef = g_lp + g_ent·ent   (g_ent = 0: p·g_lp − g_lp·onehot)

    h_ptr / w_ptr / t_ptr point at the tile's first row / first vocab row; out is [n_rows, n_cols] row-major."""
    pid_n, pid_v = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # [BV]
    row_ok, col_ok = rows < n_rows, cols < n_cols
    z = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, hidden_dim, inv_t, BLOCK_N, BLOCK_V, BLOCK_H)
    logp = z - tl.load(lse_ptr + rows, mask=row_ok, other=0.0)[:, None]  # [BN, BV]
    p = tl.exp(logp)
    if HAS_ENT:
        g_ent = tl.load(gent_ptr + rows, mask=row_ok, other=0.0)
        coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
        neg = p * (g_ent[:, None] * logp + coef[:, None])
    else:
        neg = p * tl.load(glp_ptr + rows, mask=row_ok, other=0.0)[:, None]
    if HAS_LP:
        g_lp = tl.load(glp_ptr + rows, mask=row_ok, other=0.0)
        tgt = tl.load(t_ptr + rows, mask=row_ok, other=-1) - v0  # [BN]
        neg -= tl.where(cols[None, :] == tgt[:, None], g_lp[:, None], 0.0)
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    tl.store(out_ptr + offs, neg, mask=row_ok[:, None] & col_ok[None, :])

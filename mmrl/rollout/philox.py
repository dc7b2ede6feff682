"""Counter-based random numbers on any device: Philox-4x32-10 over int64 tensors.

Sampling randomness must be a pure function of (seed, step, prompt id, completion index, token position) — so a
resumed run, a run on K processes and a run with another batch composition draw the same tokens — and it must be
made where the logits are (a GPU), for the whole batch at once. A counter-based generator gives exactly that:
the output is a fixed function of (key, counter), evaluated element-wise, so one tensor op sequence yields the
uniforms of every row and position with no generator state and no host round trip.

Philox-4x32-10 (Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3", SC'11; no arXiv
id): a 4×32-bit counter and a 2×32-bit key, ten rounds of two 32×32→64-bit multiplies (M0 = 0xD2511F53,
M1 = 0xCD9E8D57) whose high and low halves are xored and permuted, the key bumped by the Weyl constants
(0x9E3779B9, 0xBB67AE85) between rounds. Checked against the Random123 known-answer vectors in the tests.
Differs from: torch's own Philox (CUDA generator state, not addressable per row) — this one is keyed per row.

The 32-bit words are held in int64 tensors (torch has no general unsigned 32-bit arithmetic); each 32×32
multiply is split into 16-bit halves so no intermediate exceeds 2^49, exact on every device.
"""

from __future__ import annotations

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of the 64-bit product a·b, for a constant a < 2^32 and b [*] in [0, 2^32)."""
    x = a * (b >> 16)  # < 2^48
    y = a * (b & 0xFFFF)  # < 2^48
    s = ((x & 0xFFFF) << 16) + y  # < 2^49
    return (x >> 16) + (s >> 32), s & MASK32


def philox4x32(counter: list[torch.Tensor], key: list[torch.Tensor], rounds: int = 10) -> list[torch.Tensor]:
    """Philox-4x32-`rounds` of broadcastable int64 tensors holding 32-bit words: counter (c0, c1, c2, c3) and key
    (k0, k1) → four words of output. Pure and element-wise."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def uniforms(keys: torch.Tensor, positions: int, stream: int = 0) -> torch.Tensor:
    """U[n, t] ∈ [0, 1) in float64 (53 random bits) for row keys [N] (non-negative int64, e.g. `row_seed`) and
    positions t = 0 … positions−1, on the keys' device; `stream` separates independent uses of one key."""
    keys = keys.to(torch.int64).unsqueeze(1)  # [N, 1]
    t = torch.arange(positions, dtype=torch.int64, device=keys.device).unsqueeze(0)  # [1, T]
    zero = torch.zeros_like(t)
    out = philox4x32([t, zero + stream, zero, zero], [keys & MASK32, (keys >> 32) & MASK32])
    bits = (out[0] << 21) | (out[1] >> 11)  # [N, T] 53 bits
    return bits.to(torch.float64) * 2.0**-53

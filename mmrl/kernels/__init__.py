"""Linear → token log-prob / entropy kernels that never materialise the full [N, V] logits.

`token_logprobs(hidden [N, H], weight [V, H], targets [N], *, temperature, chunk_size, with_entropy, backend)`
→ (logprobs [N], entropy [N] | None) is the entry point. Backends (`BACKENDS`, picked by `backend=`):

- "auto" (default): "triton" for CUDA tensors when triton imports, else "torch".
- "torch": `fused.FusedTokenLogprobs`, a custom autograd Function over [chunk, block] tiles with an online
  log-sum-exp; saves lse/entropy per row, recomputes logits in backward (any device, fp32/bf16/fp16/fp64).
- "triton": `triton_logprobs` — Triton forward kernel and −dz kernel, backward GEMMs in torch (CUDA; CPU only
  under TRITON_INTERPRET=1).
- "naive": `naive_token_logprobs`, the plain reference (full logits; tests and benchmarks).
- "checkpoint": row chunks of the reference under activation checkpointing (the previous implementation).

`minp_log_mass` gives the probability mass a min-p filter keeps (chunked, no gradient). Benchmarks:
`benchmarks/kernels.py`.
"""

from mmrl.kernels.fused import FusedTokenLogprobs, fused_token_logprobs
from mmrl.kernels.logprobs import (
    BACKENDS,
    checkpoint_token_logprobs,
    minp_log_mass,
    naive_token_logprobs,
    token_logprobs,
)

__all__ = [
    "BACKENDS",
    "FusedTokenLogprobs",
    "checkpoint_token_logprobs",
    "fused_token_logprobs",
    "minp_log_mass",
    "naive_token_logprobs",
    "token_logprobs",
]

"""Linear → token log-prob / entropy kernels that never materialise the full [N, V] logits.

`token_logprobs` is the entry point (chunked torch path, any device); `naive_token_logprobs` is the plain
reference used by tests and benchmarks. Triton kernels and the fully fused custom-autograd path come later
(issue: fused loss kernels); they will keep this signature.
"""

from mmrl.kernels.logprobs import minp_log_mass, naive_token_logprobs, token_logprobs

__all__ = ["minp_log_mass", "token_logprobs", "naive_token_logprobs"]

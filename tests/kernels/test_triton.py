"""The Triton backend against the plain `naive_token_logprobs` reference: values, entropy and both gradients.

On a CUDA machine these run on the GPU. Without one, `test_in_the_interpreter` re-runs this file in a subprocess
with TRITON_INTERPRET=1 (the variable must be set before triton is imported), on tiny shapes because the
interpreter is slow. The interpreter (numpy) mis-reads bf16 tensors, so bf16 parity runs on CUDA only.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrl.kernels import naive_token_logprobs
from mmrl.kernels.logprobs import IGNORE

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
runs_kernels = pytest.mark.skipif(
    not HAS_TRITON or not (CUDA or INTERPRET), reason="needs triton and CUDA, or TRITON_INTERPRET=1"
)


@pytest.mark.skipif(INTERPRET or CUDA or not HAS_TRITON, reason="runs the cases below in the interpreter")
def test_in_the_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())],
        check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout.splitlines()[-1])
    assert passed and int(passed.group(1)) >= 13, proc.stdout[-2000:]  # every fp32 case ran, none skipped


def make(dtype, n, h, v, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(masked)] = IGNORE
    return hidden.to(DEVICE), weight.to(DEVICE), targets.to(DEVICE)


def run(fn, hidden, weight, targets, use, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, ent = fn(h, w, targets, **kw)
    g = torch.Generator().manual_seed(1)
    up_lp, up_ent = (torch.randn(logp.shape, generator=g).to(DEVICE) for _ in range(2))
    loss = (logp * up_lp).sum() * ("lp" in use) + ((ent * up_ent).sum() if "ent" in use else 0)
    loss.backward()
    return logp.detach(), (None if ent is None else ent.detach()), h.grad, w.grad


def rel_err(actual, expected):
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp(min=1e-12)).item()


def triton_fn(h, w, t, **kw):
    from mmrl.kernels.triton_logprobs import triton_token_logprobs

    return triton_token_logprobs(h, w, t, chunk_size=5, vocab_block=48, **kw)  # backward tiles split N and V


@runs_kernels
@pytest.mark.parametrize("v", [37, 130])  # 2 and 5 vocab blocks of 32 in the interpreter: split merging
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize(
    ("with_entropy", "use"), [(True, ("lp", "ent")), (False, ("lp",)), (True, ("ent",))], ids=["both", "lp", "ent"]
)
def test_matches_reference_fp32(v, temperature, with_entropy, use):
    hidden, weight, targets = make(torch.float32, n=7, h=16, v=v, masked=(2,))
    kw = {"temperature": temperature, "with_entropy": with_entropy, "use": use}
    ref = run(naive_token_logprobs, hidden, weight, targets, **kw)
    out = run(triton_fn, hidden, weight, targets, **kw)
    assert out[0].dtype == torch.float32 and out[0][2] == 0
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=0)
    if with_entropy:
        torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=0)
        assert out[1][2] == 0
    assert rel_err(out[2], ref[2]) <= 1e-4 and rel_err(out[3], ref[3]) <= 1e-4
    assert torch.equal(out[2][2], torch.zeros_like(out[2][2]))  # masked row: no gradient


@runs_kernels
def test_token_logprobs_backend_knob():
    from mmrl.kernels import token_logprobs

    hidden, weight, targets = make(torch.float32, n=7, h=16, v=37, masked=())
    out = token_logprobs(hidden, weight, targets, with_entropy=True, backend="triton")
    ref = naive_token_logprobs(hidden, weight, targets, with_entropy=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(not (HAS_TRITON and CUDA) or INTERPRET, reason="bf16: CUDA only (the interpreter mis-reads bf16)")
def test_bf16_error_at_most_twice_the_reference_in_bf16():
    hidden, weight, targets = make(torch.bfloat16, n=67, h=64, v=301, masked=(5,))
    kw = {"temperature": 0.7, "with_entropy": True, "use": ("lp", "ent")}
    exact = run(naive_token_logprobs, hidden.float(), weight.float(), targets, **kw)
    ref16 = run(naive_token_logprobs, hidden, weight, targets, **kw)
    out16 = run(triton_fn, hidden, weight, targets, **kw)
    for name, o, r, e in zip(("logp", "ent", "dh", "dW"), out16, ref16, exact):
        assert rel_err(o, e) <= 2 * rel_err(r, e) + 1e-6, name

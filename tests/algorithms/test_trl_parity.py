"""mmrl's `objective` against TRL's real, unmodified `GRPOTrainer._compute_loss` (float64, loss and gradient).

`_compute_loss` is called as an unbound function on a stand-in `self` that carries only what it reads: the
attributes `GRPOTrainer.__init__` derives from a real `GRPOConfig` (so every knob name is TRL's own), a
single-process accelerator, and `_get_per_token_logps_and_entropies` replaced to return our fixed per-token
log-probs and entropies (the model forward is not under test, only the loss math). Both sides get identical
log-probs, old log-probs, reference log-probs, advantages and masks; TRL gets the integer completion mask it uses.

Knob mapping (TRL → mmrl):
  epsilon / epsilon_high            → clip_low / clip_high
  loss_type=cispo, epsilon_high     → policy_loss=cispo, clip_high = epsilon_high − 1, clip_low ≥ 1 (no floor)
  loss_type=grpo | sapo             → aggregation=seq_mean_token_mean   (÷ GA per micro-batch)
  loss_type=dr_grpo                 → seq_mean_token_sum_norm, max_tokens = max_completion_length
  loss_type=dapo | cispo            → token_mean over num_items_in_batch (the generation batch's tokens)
  loss_type=bnpo                    → token_mean with *local* norms (the micro-batch's own tokens)
  loss_type=luspo                   → seq_mean_token_sum
  importance_sampling_level=sequence → ratio_level=sequence (GSPO)
  beta (k3, use_bias_correction_kl=False) → kl_coef, kl_estimator=k3
  sapo_temperature_pos / _neg       → tau_pos / tau_neg
Documented differences are asserted as differences (see the tests named `*_differs_*`).
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
from trl import GRPOConfig
from trl.trainer.grpo_trainer import GRPOTrainer

from mmrl.algorithms import PRESETS, TokenTerms, advantages, objective
from mmrl.config import AlgorithmConfig

F64 = torch.float64
TOL = {"rtol": 1e-6, "atol": 1e-9}  # float64 end to end (TRL keeps the input dtype); observed agreement ~1e-15
G, T, MAX_TOKENS = 4, 6, 8
REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]  # one tied group (Â = 0)
LENGTHS = [6, 4, 1, 5, 3, 6, 2, 6, 6, 1, 3, 5]
NEAR = (0, 3, 9, 10)  # |log ρ| ~ 1e-4 (inside GSPO's band); the other rows have |log ρ| ~ 0.35 (clipped often)


# ---------------------------------------------------------------------------------------------------- batch
class Batch(SimpleNamespace):
    pass


def make_batch(seed: int = 7) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    n = len(REWARDS)
    logp = -(torch.rand(n, T, generator=gen, dtype=F64) * 2.5 + 0.05)
    step = torch.tensor([1e-4 if i in NEAR else 0.35 for i in range(n)], dtype=F64)[:, None]
    old = logp - torch.randn(n, T, generator=gen, dtype=F64) * step
    old[1, 0] = logp[1, 0] - 1.8  # ρ ≈ 6 on a negative-advantage token: above CISPO's ε_max = 5 as well
    old[0, 1] = logp[0, 1] - 1.8  # … and on a positive-advantage one
    ref = logp + 0.3 * torch.randn(n, T, generator=gen, dtype=F64)
    entropy = torch.rand(n, T, generator=gen, dtype=F64) * 2
    mask = torch.zeros(n, T, dtype=torch.long)
    for i, length in enumerate(LENGTHS):
        mask[i, :length] = 1
    adv = advantages(torch.tensor(REWARDS, dtype=F64), group_size=G)  # GRPO's, computed once and shared
    return Batch(logp=logp.requires_grad_(), old=old, ref=ref, entropy=entropy.requires_grad_(), mask=mask, adv=adv)


# ---------------------------------------------------------------------------------------------------- TRL side
def trl_config(**kw) -> GRPOConfig:
    kw = dict(output_dir=tempfile.gettempdir(), report_to="none", bf16=False, use_cpu=True,
              max_completion_length=MAX_TOKENS, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOConfig(**kw)


class SingleProcess:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


class TRLStandIn:
    """The attributes `_compute_loss` reads, set exactly as `GRPOTrainer.__init__` sets them from `args`."""

    def __init__(self, args: GRPOConfig, logp, entropy):
        self.args = args
        self.loss_type = args.loss_type
        self.beta = args.beta
        self.importance_sampling_level = args.importance_sampling_level
        self.epsilon_low = args.epsilon
        self.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
        self.max_completion_length = args.max_completion_length
        self.top_entropy_quantile = args.top_entropy_quantile
        self.off_policy_mask_threshold = args.off_policy_mask_threshold
        self.use_vllm = args.use_vllm
        self.vllm_importance_sampling_correction = args.vllm_importance_sampling_correction
        self.entropy_coef = args.entropy_coef
        self.use_adaptive_entropy = args.use_adaptive_entropy
        self._entropy_bonus_enabled = self.entropy_coef != 0.0 or self.use_adaptive_entropy
        self._last_world_entropy = float("inf")
        self._entropy_window_stats = None
        self.aux_loss_enabled = False  # a dense (non-MoE) model
        self.current_gradient_accumulation_steps = args.gradient_accumulation_steps  # set by transformers.Trainer
        self.model = SimpleNamespace(training=True)
        self.accelerator = SingleProcess()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._logp, self._entropy = logp, entropy

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == self._logp.shape[1] and input_ids.shape[0] == self._logp.shape[0]
        return self._logp, self._entropy, None


def trl_loss(b: Batch, args: GRPOConfig, rows=slice(None), *, num_items=None, with_old=True):
    """TRL's loss on rows `rows` of the batch; `num_items` = num_items_in_batch (default: every token)."""
    me = TRLStandIn(args, b.logp[rows], b.entropy[rows])
    mask = b.mask[rows]
    n = mask.shape[0]
    inputs = {
        "prompt_ids": torch.zeros(n, 3, dtype=torch.long), "prompt_mask": torch.ones(n, 3, dtype=torch.long),
        "completion_ids": torch.zeros(n, T, dtype=torch.long), "completion_mask": mask,
        "advantages": b.adv[rows], "ref_per_token_logps": b.ref[rows],
        "num_items_in_batch": torch.tensor(int(b.mask.sum()) if num_items is None else num_items),
    }
    if with_old:
        inputs["old_per_token_logps"] = b.old[rows]
    loss = GRPOTrainer._compute_loss(me, None, inputs)
    return loss, me._metrics["train"]


# ---------------------------------------------------------------------------------------------------- mmrl side
def algo(name: str, **overrides) -> AlgorithmConfig:
    return dataclasses.replace(AlgorithmConfig(**PRESETS.get(name)), **overrides)


def norms_of(mask: torch.Tensor) -> dict[str, int]:
    return {"global_tokens": int(mask.sum()), "global_seqs": mask.shape[0], "max_tokens": MAX_TOKENS}


def mmrl_loss(b: Batch, a: AlgorithmConfig, rows=slice(None), norms=None, old=None):
    mask = b.mask[rows].to(F64)
    terms = TokenTerms(logp=b.logp[rows], old_logp=b.old[rows] if old is None else old, mask=mask,
                       advantages=b.adv[rows], entropy=b.entropy[rows], ref_logp=b.ref[rows])
    return objective(terms, a, norms_of(b.mask) if norms is None else norms)


def d(loss, b: Batch) -> list[torch.Tensor]:
    out = torch.autograd.grad(loss, [b.logp, b.entropy], allow_unused=True, retain_graph=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(out, [b.logp, b.entropy])]


def assert_same(mine, theirs, b: Batch):
    torch.testing.assert_close(mine, theirs, **TOL)
    for g, w in zip(d(mine, b), d(theirs, b)):
        torch.testing.assert_close(g, w, **TOL)
    assert d(mine, b)[0].abs().sum() > 0


# ------------------------------------------------------------------------------------------------------- cases
# τ_neg: TRL builds its temperature tensor with torch.where(adv > 0, 1.0, 1.05), i.e. in the default dtype
# (float32) even for float64 inputs, so its τ_neg is float32(1.05) = 1.0499999523…; mmrl keeps the input dtype.
# The case below feeds mmrl that same float32-rounded value; test_sapo_differs_only_by_float32_temperature checks
# the size of the difference at the exact 1.05.
TAU_NEG_F32 = float(torch.tensor(1.05, dtype=torch.float32))

GSPO_CLIP = {"importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4}  # GSPO §5.1
NO_IS_KL = {"use_bias_correction_kl": False}  # plain k3, as in DeepSeekMath (see test_bias_corrected_kl_differs)

CASES = {  # name: (TRL GRPOConfig kwargs, mmrl algorithm)
    "grpo": ({"loss_type": "grpo", "beta": 0.0}, algo("grpo", kl_coef=0.0)),
    "grpo_k3_kl": ({"loss_type": "grpo", "beta": 0.04, **NO_IS_KL}, algo("grpo")),
    "dr_grpo": ({"loss_type": "dr_grpo", "beta": 0.0}, algo("dr_grpo")),
    "dapo": ({"loss_type": "dapo", "beta": 0.0, "epsilon_high": 0.28}, algo("dapo")),
    "dapo_k3_kl": ({"loss_type": "dapo", "beta": 0.01, "epsilon_high": 0.28, **NO_IS_KL},
                   algo("dapo", kl_coef=0.01, kl_estimator="k3")),
    # TRL's cispo ε_max is an absolute bound on ρ: mmrl's preset clip_high = 0.2 is epsilon_high = 1.2
    "cispo": ({"loss_type": "cispo", "beta": 0.0, "epsilon_high": 1.2}, algo("cispo")),
    "cispo_scalerl": ({"loss_type": "cispo", "beta": 0.0, "epsilon_high": 5.0}, algo("cispo", clip_high=4.0)),
    "sapo": ({"loss_type": "sapo", "beta": 0.0}, algo("sapo", tau_neg=TAU_NEG_F32)),
    "gspo": ({"loss_type": "grpo", "beta": 0.0, **GSPO_CLIP}, algo("gspo")),
    "gspo_k3_kl": ({"loss_type": "grpo", "beta": 0.04, **GSPO_CLIP, **NO_IS_KL}, algo("gspo", kl_coef=0.04)),
    "luspo": ({"loss_type": "luspo", "beta": 0.0, **GSPO_CLIP}, algo("luspo")),
    "cispo_sequence": ({"loss_type": "cispo", "beta": 0.0, "epsilon_high": 1.2,
                        "importance_sampling_level": "sequence"}, algo("cispo", ratio_level="sequence")),
}


@pytest.fixture(scope="module")
def batch() -> Batch:
    return make_batch()


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_micro_batch_matches_trl(case, batch):
    kw, a = CASES[case]
    theirs, metrics = trl_loss(batch, trl_config(**kw))
    mine, stats = mmrl_loss(batch, a)
    assert_same(mine, theirs, batch)
    tokens = int(batch.mask.sum())
    if kw.get("beta", 0.0) > 0:  # TRL logs the masked token mean of its per-token k3, mmrl the token sum
        assert metrics["kl"][-1] == pytest.approx(stats["kl"] / tokens, rel=1e-9)
    if kw["loss_type"] in ("grpo", "dapo", "dr_grpo") and kw.get("importance_sampling_level") != "sequence":
        # TRL's region clip fraction (ρ < 1−ε with Â < 0, or ρ > 1+ε with Â > 0) = mmrl's clipped-token count
        assert metrics["clip_ratio/region_mean"][-1] * tokens == pytest.approx(stats["clip"])
        assert stats["clip"] > 0


def test_bnpo_is_token_mean_with_local_norms(batch):
    theirs, _ = trl_loss(batch, trl_config(loss_type="bnpo", beta=0.0))
    mine, _ = mmrl_loss(batch, algo("grpo", kl_coef=0.0, aggregation="token_mean"))  # local = global here
    assert_same(mine, theirs, batch)


def test_on_policy_without_old_logps(batch):
    # TRL skips old_per_token_logps when π_old = π_θ and uses per_token_logps.detach(): ratio 1, REINFORCE gradient.
    theirs, _ = trl_loss(batch, trl_config(loss_type="dapo", beta=0.0, epsilon_high=0.28), with_old=False)
    mine, stats = mmrl_loss(batch, algo("dapo"), old=batch.logp.detach())
    assert_same(mine, theirs, batch)
    assert stats["clip"] == 0


# ---------------------------------------------------------------------------- gradient accumulation (2 micro-batches)
ACCUMULATING = ["grpo", "grpo_k3_kl", "dr_grpo", "dapo", "cispo", "sapo", "gspo", "luspo"]


@pytest.mark.parametrize("case", ACCUMULATING)
def test_accumulated_micro_batches_match_trl(case, batch):
    # TRL: each micro-batch's loss is divided by current_gradient_accumulation_steps (grpo/sapo/dr_grpo/luspo,
    # assuming equal micro-batch sizes) or by num_items_in_batch·GA/steps_per_generation (dapo/cispo). Summed over
    # the window this is mmrl's objective on the whole batch with global norms — and mmrl's own micro-batch sum.
    kw, a = CASES[case]
    args = trl_config(gradient_accumulation_steps=2, **kw)
    assert args.steps_per_generation == 2
    halves = [slice(0, 6), slice(6, 12)]
    theirs = sum(trl_loss(batch, args, rows)[0] for rows in halves)
    mine_full, _ = mmrl_loss(batch, a)
    mine_split = sum(mmrl_loss(batch, a, rows)[0] for rows in halves)  # global norms on each part
    assert_same(mine_full, theirs, batch)
    assert_same(mine_split, theirs, batch)


def test_bnpo_differs_under_accumulation(batch):
    # TRL's bnpo divides each micro-batch by its *own* token count (then by GA): the result depends on the split.
    # It equals mmrl's token_mean with local norms per micro-batch ÷ GA, not the global token mean.
    args = trl_config(loss_type="bnpo", beta=0.0, gradient_accumulation_steps=2)
    halves = [slice(0, 6), slice(6, 12)]
    a = algo("grpo", kl_coef=0.0, aggregation="token_mean")
    theirs = sum(trl_loss(batch, args, rows)[0] for rows in halves)
    local = sum(mmrl_loss(batch, a, rows, norms=norms_of(batch.mask[rows]))[0] / 2 for rows in halves)
    assert_same(local, theirs, batch)
    global_, _ = mmrl_loss(batch, a)
    assert abs(global_.item() - theirs.item()) > 1e-4  # token counts of the halves differ (25 vs 23)


def test_dapo_steps_per_generation_differs(batch):
    # With steps_per_generation > GA (the generation batch feeds several optimizer steps), TRL divides each step's
    # token sum by num_items_in_batch / steps_per_generation, the *average* step's token count; mmrl divides by the
    # step's actual token count (norms of the mini-batch). Equal only when the steps hold equally many tokens.
    args = trl_config(loss_type="dapo", beta=0.0, epsilon_high=0.28, steps_per_generation=2)
    assert args.gradient_accumulation_steps == 1
    a, total = algo("dapo"), int(batch.mask.sum())
    for rows in (slice(0, 6), slice(6, 12)):
        theirs, _ = trl_loss(batch, args, rows, num_items=total)
        mine, _ = mmrl_loss(batch, a, rows, norms=norms_of(batch.mask[rows]))  # mmrl: this mini-batch's tokens
        step_tokens = int(batch.mask[rows].sum())
        assert step_tokens != total / 2
        assert_same(mine * step_tokens / (total / 2), theirs, batch)  # the documented rescaling, exactly


# ------------------------------------------------------------------------------------------ documented differences
def test_sapo_differs_only_by_float32_temperature(batch):
    theirs, _ = trl_loss(batch, trl_config(loss_type="sapo", beta=0.0))
    exact, _ = mmrl_loss(batch, algo("sapo"))  # τ_neg = 1.05 in float64
    rel = abs(exact.item() - theirs.item()) / abs(theirs.item())
    assert 0 < rel < 1e-4  # 1.05 vs float32(1.05): relative 4.5e-8 in τ, amplified by cancellation in the sum
    # with temperatures exactly representable in float32 the two agree to float64 precision
    theirs, _ = trl_loss(batch, trl_config(loss_type="sapo", beta=0.0, sapo_temperature_neg=1.25,
                                           sapo_temperature_pos=0.75))
    mine, _ = mmrl_loss(batch, algo("sapo", tau_pos=0.75, tau_neg=1.25))
    assert_same(mine, theirs, batch)


def test_bias_corrected_kl_differs(batch):
    # TRL's default use_bias_correction_kl=True multiplies the per-token k3 by the IS ratio ρ = π_θ/π_old (with its
    # gradient; DeepSeek-V3.2), mmrl's KL term is plain k3. Asserted: TRL = mmrl(β = 0) + β·Agg[k3·ρ].
    args = trl_config(loss_type="grpo", beta=0.04)
    assert args.use_bias_correction_kl
    theirs, _ = trl_loss(batch, args)
    pg, _ = mmrl_loss(batch, algo("grpo", kl_coef=0.0))
    delta = batch.ref - batch.logp
    k3_rho = (torch.exp(delta) - delta - 1) * torch.exp(batch.logp - batch.old)
    m = batch.mask.to(F64)
    seq_mean_token_mean = ((k3_rho * m).sum(1) / m.sum(1)).mean()
    assert_same(pg + 0.04 * seq_mean_token_mean, theirs, batch)
    plain, _ = mmrl_loss(batch, algo("grpo"))
    assert abs(plain.item() - theirs.item()) > 1e-6


def test_entropy_bonus_matches_for_bnpo_and_differs_for_grpo(batch):
    # TRL's entropy bonus is always the micro-batch's *token* mean of H (÷ GA), whatever the loss_type; mmrl
    # aggregates H with the policy term's aggregation. Equal for bnpo (local token mean); for grpo TRL's is
    # mmrl(grpo, no entropy) − c·token_mean(H), not mmrl's − c·seq_mean_token_mean(H).
    c = 0.01
    theirs, _ = trl_loss(batch, trl_config(loss_type="bnpo", beta=0.0, entropy_coef=c))
    mine, _ = mmrl_loss(batch, algo("grpo", kl_coef=0.0, aggregation="token_mean", entropy_coef=c))
    assert_same(mine, theirs, batch)
    assert d(theirs, batch)[1].abs().sum() > 0  # the entropy leaf is differentiated on both sides

    theirs, _ = trl_loss(batch, trl_config(loss_type="grpo", beta=0.0, entropy_coef=c))
    pg, _ = mmrl_loss(batch, algo("grpo", kl_coef=0.0))
    m = batch.mask.to(F64)
    token_mean_h = (batch.entropy * m).sum() / m.sum()
    assert_same(pg - c * token_mean_h, theirs, batch)
    mine, _ = mmrl_loss(batch, algo("grpo", kl_coef=0.0, entropy_coef=c))
    assert abs(mine.item() - theirs.item()) > 1e-6


def test_cispo_clip_metric_counts_only_positive_advantages(batch):
    # Loss parity holds (test_one_micro_batch_matches_trl[cispo*]); the *metric* differs: TRL's cispo_clip_ratio
    # counts tokens with ρ > ε_max and Â > 0, mmrl's clip stat counts every token whose IS weight was clipped.
    _, metrics = trl_loss(batch, trl_config(loss_type="cispo", beta=0.0, epsilon_high=5.0))
    _, stats = mmrl_loss(batch, algo("cispo", clip_high=4.0))
    m = batch.mask.bool()
    over = (torch.exp(batch.logp - batch.old) > 5.0) & m
    positive = over & (batch.adv[:, None] > 0)
    assert stats["clip"] == int(over.sum()) == 2
    assert metrics["cispo_clip_ratio"][-1] * int(m.sum()) == pytest.approx(int(positive.sum())) and positive.sum() == 1

"""The `algorithm` section's registry names, checked beside their registries (`mmrl.cli.checks` runs this with
`mmrl.config`'s own checks): each unknown name is one `algorithm.<knob>: unknown … (valid: …)` line with a
did-you-mean, from `Registry.get`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmrl.algorithms import (
    AGGREGATIONS, BASELINES, COV_MODES, GROUP_FILTERS, KL_ESTIMATORS, POLICY_LOSSES, PROMPT_WEIGHTS, RATIO_LEVELS,
    SCALES,
)
from mmrl.algorithms.divergences import F_DIVERGENCES
from mmrl.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from mmrl.config import AlgorithmConfig

# AlgorithmConfig field -> the registry its value names
NAMED: dict[str, Registry] = {
    "baseline": BASELINES, "scale": SCALES, "ratio_level": RATIO_LEVELS, "policy_loss": POLICY_LOSSES,
    "aggregation": AGGREGATIONS, "kl_estimator": KL_ESTIMATORS, "masked_kl_estimator": KL_ESTIMATORS,
    "group_filter": GROUP_FILTERS, "cov_mode": COV_MODES, "prompt_weighting": PROMPT_WEIGHTS,
    "rehearsal_divergence": F_DIVERGENCES,
}


def check_algorithm(algorithm: AlgorithmConfig, key: str = "algorithm") -> list[str]:
    """One line per knob of `NAMED` whose value its registry does not hold, in `NAMED`'s order."""
    errors = []
    for field, registry in NAMED.items():
        try:
            registry.get(getattr(algorithm, field))
        except UnknownNameError as e:
            errors.append(f"{key}.{field}: {e}")
    return errors

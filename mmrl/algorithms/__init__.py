"""Policy-optimisation building blocks, each a registered pure tensor function.

The trainer looks pieces up by name (`algorithm.baseline`, `scale`, `ratio_level`, `policy_loss`,
`aggregation`, `kl_estimator`, `group_filter`) and never branches on a method's name; a preset is a named bundle
of those knobs. Dimension letters: B prompts, G group size, N = B·G completions, T completion tokens.
"""

from mmrl.algorithms.advantages import BASELINES, SCALES, advantages
from mmrl.algorithms.divergences import KL_ESTIMATORS
from mmrl.algorithms.losses import AGGREGATIONS, POLICY_LOSSES, RATIO_LEVELS
from mmrl.algorithms.objective import COV_MODES, TokenTerms, kl_penalty_per_sequence, objective
from mmrl.algorithms.presets import PRESETS
from mmrl.algorithms.prompts import PROMPT_WEIGHTS
from mmrl.algorithms.sampling import GROUP_FILTERS, keep_groups

__all__ = [
    "AGGREGATIONS", "BASELINES", "COV_MODES", "GROUP_FILTERS", "KL_ESTIMATORS", "POLICY_LOSSES", "PRESETS", "PROMPT_WEIGHTS", "RATIO_LEVELS",
    "SCALES", "TokenTerms", "advantages", "keep_groups", "kl_penalty_per_sequence", "objective",
]

"""Policy-optimisation building blocks, each a registered pure tensor function.

The trainer looks pieces up by name (`algorithm.advantage`, `algorithm.policy_loss`,
`algorithm.aggregation`, `algorithm.kl_estimator`) and never branches on a method's name; a preset is a named
bundle of those knobs. Dimension letters: B prompts, G group size, T completion tokens.
"""

from mmrl.algorithms.advantages import ADVANTAGES
from mmrl.algorithms.divergences import KL_ESTIMATORS
from mmrl.algorithms.losses import AGGREGATIONS, POLICY_LOSSES
from mmrl.algorithms.presets import PRESETS

__all__ = ["ADVANTAGES", "AGGREGATIONS", "KL_ESTIMATORS", "POLICY_LOSSES", "PRESETS"]

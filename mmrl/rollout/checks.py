"""The `rollout` section's names checked beside their registries (`mmrl.cli.checks` runs this with
`mmrl.config`'s own checks): the engine (`ENGINES`), each extra pass with its options (`EXTRA_PASSES`) and the
tools with their call format (`mmrl.tools.checks`), one `key: …` line per problem with a did-you-mean."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from mmrl.registry import UnknownNameError, closest, unknown_options
from mmrl.rollout import ENGINES
from mmrl.rollout.passes import EXTRA_PASSES

if TYPE_CHECKING:
    from mmrl.config import RolloutConfig


def check_rollout(rollout: RolloutConfig) -> list[str]:
    """The engine's name, then each extra pass's kind and, for a known kind, its option names."""
    errors = []
    if rollout.engine not in ENGINES:
        hint = closest(rollout.engine, list(ENGINES))
        extra = f"; did you mean {hint!r}?" if hint else ""
        errors.append(f"rollout.engine: unknown engine {rollout.engine!r}{extra} (valid: {', '.join(ENGINES)})")
    for i, xp in enumerate(rollout.extra_passes):
        try:
            fn = EXTRA_PASSES.get(xp.kind)
        except UnknownNameError as e:
            errors.append(f"rollout.extra_passes[{i}].kind: {e}")
            continue  # its options are only known for a known pass
        valid = [p for p in inspect.signature(fn).parameters if p not in ("ctx", "prompts", "ro")]
        errors += unknown_options(xp.kwargs, valid, f"rollout.extra_passes[{i}].kwargs", "")
    if rollout.tools:
        from mmrl.tools.checks import check_call_format, check_tools

        errors += check_tools(rollout.tools, "rollout.tools") + check_call_format(rollout.tool_format,
                                                                                   "rollout.tool_format")
    return errors

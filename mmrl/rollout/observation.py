"""A tool turn's tokens, from the chat template alone, without re-tokenising the conversation before it.

The template is rendered twice on the host: the history (as the prompt was, with the generation prompt) and the
history + an assistant turn holding a marker + the new tool messages (with the generation prompt). The first must
be exactly the second's text before the marker — else the template renders earlier turns differently once more
messages follow, and appending only the new tokens would not be the conversation; that is an error, never a silent
re-tokenisation. The text after the marker is the observation: the template's end of the assistant's turn
(`<|im_end|>\\n` for Qwen; dropped when the policy ended its turn with that token itself), the tool messages and
the next assistant header. The real processor tokenises it with the new images only, so each image's placeholder
is expanded to its own grid, and returns the images' tensors (`pixel_values`, `image_grid_thw`, …).

The split between the policy's last token and the observation's first lies at the template's end-of-turn token, a
special token, so tokenising the observation alone gives the ids the processor gives the whole conversation
(`tests/rollout/test_multiturn.py` checks it against one pass).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mmrl.model.prompts import TOKEN_KEYS
from mmrl.perception.geometry import pixel_limits, set_pixel_limits
from mmrl.tools.types import ToolResult

MARK = "\u0000mmrl-turn\u0000"  # never in a template, never produced by a tokenizer's decode of a sampled turn


@dataclass(frozen=True)
class Observation:
    """The tokens appended after a policy turn: `text` as rendered, `ids` [K] (host) and the processor's tensors of
    its images (`media`: pixel_values, image_grid_thw, …; empty without images), `mm_token_type_ids` [K]."""

    text: str
    ids: torch.Tensor  # [K] long, host
    token_types: torch.Tensor  # [K] the processor's mm_token_type_ids (1 on image tokens), zeros if it has none
    media: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def tool_messages(results: Sequence[ToolResult]) -> list[dict[str, Any]]:
    """One `tool` message per result: its images first, then its text (an empty text when it has neither)."""
    out = []
    for r in results:
        content: list[dict[str, Any]] = [{"type": "image"} for _ in r.images]
        if r.text or not r.images:
            content.append({"type": "text", "text": r.text})
        out.append({"role": "tool", "content": content})
    return out


def render(processor, messages: list[dict[str, Any]], template_kwargs: dict[str, Any] | None = None) -> str:
    """The chat template's text of `messages`, followed by the assistant's generation prompt."""
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         **(template_kwargs or {}))


def observation_text(processor, history: list[dict[str, Any]], new: list[dict[str, Any]], *,
                     policy_end: str | None = None, template_kwargs: dict[str, Any] | None = None) -> str:
    """The text the template puts after an assistant turn that follows `history`, when the `new` messages follow
    it (and the next generation prompt). `policy_end`: the end-of-turn token the policy itself wrote (its EOS),
    left out of the observation when the template's text starts with it."""
    before = render(processor, history, template_kwargs)
    full = render(processor, history + [{"role": "assistant", "content": [{"type": "text", "text": MARK}]}] + new,
                  template_kwargs)
    head, found, rest = full.partition(MARK)
    if not found:
        raise ValueError("the chat template dropped the assistant's turn text; cannot place the tool turn after it")
    if head != before:
        raise ValueError("the chat template renders the conversation before a tool turn differently once the turn "
                         "follows; appending only the new messages' tokens would not be the conversation")
    if policy_end and rest.startswith(policy_end):
        rest = rest[len(policy_end):]
    return rest


def encode_observation(processor, text: str, images: Sequence[Any], media_dtype: torch.dtype) -> Observation:
    """`text` (an `observation_text`) and its PIL `images` through the real processor: ids with each image's
    placeholder expanded, and the images' tensors."""
    out = processor(text=[text], images=list(images) or None, return_tensors="pt")
    ids = out["input_ids"][0].long()  # [K]
    types = out.get("mm_token_type_ids")
    token_types = types[0].long() if isinstance(types, torch.Tensor) else torch.zeros_like(ids)
    media = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k not in TOKEN_KEYS}
    if "pixel_values" in media:
        media["pixel_values"] = media["pixel_values"].to(media_dtype)
    return Observation(text, ids, token_types, media)


def tool_processor(processor, max_pixels: int | None):
    """The processor of the images tools return: `processor` itself, or (`max_pixels` given) a copy whose image
    processor resizes into [its own min_pixels, `max_pixels`] — tokenizer and chat template shared — so that a crop
    can be shown with more pixels than the prompt's image it came from (`rollout.tool_image_max_pixels`)."""
    if max_pixels is None:
        return processor
    lo, _ = pixel_limits(processor)
    if lo and max_pixels < lo:
        raise ValueError(f"tool_image_max_pixels: {max_pixels} is below the processor's min_pixels ({lo})")
    out = copy.copy(processor)
    out.image_processor = copy.deepcopy(processor.image_processor)
    set_pixel_limits(out.image_processor, None, max_pixels)
    return out

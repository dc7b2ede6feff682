"""Padding-free packing: a batch of prompt + completion sequences as one row, with per-sequence positions.

Image tokens make multimodal sequence lengths very uneven, so a padded [N, T] batch spends much of its compute on
pad tokens. `pack` drops every pad token and concatenates the N sequences into a single row [1, ΣL]; the model
then needs two things to compute exactly what it computes on the padded batch:

- **positions that restart per sequence.** Qwen-VL models use 3-D multimodal rope positions (temporal, height,
  width) computed by the model's own `get_rope_index`; we call it on the padded batch — the very positions the
  padded forward uses — and keep the non-pad columns. transformers takes packed Qwen-VL positions as a
  [4, 1, ΣL] tensor whose first row is the plain per-sequence text position (0, 1, …, L_i − 1); other models get
  that text row alone as [1, ΣL].
- **attention that stays inside each sequence.** With `attention_mask=None` and restarting text positions,
  transformers derives the sequence boundaries from the positions: flash-attention 2 runs its varlen kernel on
  them (`attn_implementation: flash_attention_2`, GPU only), and sdpa/eager build a block-diagonal causal mask
  (exact, any device — but it attends over ΣL × ΣL, so on CPU packing costs more than it saves; the policy
  packs by default only with flash-attention).

Media tensors (`pixel_values`, grids) are untouched: the model scatters vision features into the placeholder
tokens in row-major order, which packing preserves. Completion masks must be prefixes (1 … 1 0 … 0), as
rollouts make them; the hidden state that predicts completion token t of row i is found through `index`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

TOKEN_KEYS = ("input_ids", "mm_token_type_ids", "token_type_ids")
ROPE_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")


@dataclass
class Packed:
    inputs: dict[str, torch.Tensor]  # model inputs for one packed row (no attention_mask)
    index: torch.Tensor  # [N, C] position in the packed row of the hidden state predicting each completion token
    lengths: list[int]  # real tokens per sequence (prompt without padding + completion)


def rope_index_of(model: torch.nn.Module) -> Callable[..., Any] | None:
    """The model's multimodal rope-position function (`get_rope_index` of Qwen-VL families), if it has one."""
    inner = getattr(model, "model", model)
    return getattr(inner, "get_rope_index", None)


def rope_positions(rope_index: Callable[..., Any], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's 3-D multimodal rope positions [3, N, T] of a padded batch (`input_ids`, `mm_token_type_ids`,
    `attention_mask`, and the grids / seconds the function takes)."""
    wanted = inspect.signature(rope_index).parameters
    extra = {k: inputs[k] for k in ROPE_KEYS if k in inputs and k in wanted}
    pos3d, _ = rope_index(input_ids=inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                          attention_mask=inputs.get("attention_mask"), **extra)
    return pos3d


def pack(inputs: dict[str, torch.Tensor], prompt_len: int, completion_mask: torch.Tensor,
         rope_index: Callable[..., Any] | None = None) -> Packed:
    """Pack the padded `inputs` (prompts left-padded to `prompt_len`, completions appended: input_ids and
    attention_mask [N, P+C]) into one row; see the module docstring."""
    valid = inputs["attention_mask"].bool()  # [N, T]
    n, t = valid.shape
    c = completion_mask.shape[1]
    lengths_c = completion_mask.sum(1)  # [N]
    prefix = torch.arange(c, device=completion_mask.device).unsqueeze(0) < lengths_c.unsqueeze(1)  # [N, C]
    if not torch.equal(prefix, completion_mask.bool()):
        raise ValueError("packing needs completion masks that are prefixes (1 … 1 0 … 0)")
    text_pos = (valid.long().cumsum(1) - 1)[valid]  # [ΣL] 0 … L_i − 1 per sequence
    packed = {k: inputs[k][valid].unsqueeze(0) for k in TOKEN_KEYS if k in inputs}  # [1, ΣL]
    packed.update({k: v for k, v in inputs.items() if k not in TOKEN_KEYS and k != "attention_mask"})
    if rope_index is not None and "mm_token_type_ids" not in inputs:  # else the packed row gets text positions
        raise ValueError("packing a multimodal-rope (Qwen-VL) batch needs the processor's `mm_token_type_ids` to "
                         "compute its 3-D positions, and this batch has none: use a processor that returns it "
                         "(transformers >= 5) or set model.packing: never")
    if rope_index is not None:
        pos3d = rope_positions(rope_index, inputs)[:, valid].unsqueeze(1)  # [3, 1, ΣL]
        packed["position_ids"] = torch.cat([text_pos.view(1, 1, -1).to(pos3d), pos3d], dim=0)  # [4, 1, ΣL]
    else:
        packed["position_ids"] = text_pos.unsqueeze(0)  # [1, ΣL]
    flat = (valid.reshape(-1).long().cumsum(0) - 1).view(n, t)  # [N, T] packed column of each valid cell
    index = flat[:, prompt_len - 1 : prompt_len - 1 + c]  # [N, C] hidden at t−1 predicts token t
    index = torch.where(completion_mask.bool(), index, torch.zeros_like(index))
    return Packed(packed, index, valid.sum(1).tolist())

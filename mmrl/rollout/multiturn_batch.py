"""The batched driver of multi-turn rollouts (`MultiTurnHF.rollouts`, the module docstring of
`mmrl.rollout.multiturn` says how the rows run in lock-step): `Batch` feeds every live row's tokens through one KV
cache, `run_batch` runs the episodes' turns on it, `batched` / `each` draw the rows' tokens."""

from __future__ import annotations

from typing import Callable

import torch

from mmrl.model.vision_once import VISION_ROWS, shared_vision
from mmrl.rollout.hf_decode import generation_positions


Draw = Callable[[torch.Tensor, list[int], list[int]], tuple[list[int], list[float]]]  # (logits [R, V], rows, t)


class Batch:
    """The live rows of `rollouts` on one KV cache [R, …, L, …]: its attention mask [R, L] (0 at left padding and
    holes), each row's last position [A, R, 1] (or [R, 1]) and next-token logits [R, V]. `eps`: the rows' episodes."""

    def __init__(self, hf, policy, prompts, eps: list, n: int):
        batch = policy.collate(prompts, repeats=1, share_vision=True)  # each prompt once, left-padded, on the device
        vision = batch.pop(VISION_ROWS, None)
        inputs = batch if vision is None else shared_vision(hf.model, batch, vision)
        positions = generation_positions(hf, inputs)  # [A, B, P]
        if positions is None:
            raise ValueError(f"{type(hf).__name__} takes no position_ids: its rows cannot hold holes")
        out = hf(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        self.hf, self.pad, self.device, self.eps = hf, policy.pad_id, policy.runtime.device, list(eps)
        self.cache = out.past_key_values
        self.cache.batch_repeat_interleave(n)  # [B, …] → [N, …]
        self.logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)  # [N, V]
        self.mask = batch["attention_mask"].repeat_interleave(n, dim=0)  # [N, P]
        self.last = positions[..., -1:].repeat_interleave(n, dim=-2)  # [A, N, 1]

    def step(self, feeding: list[bool]) -> None:
        """One forward [R, 1]: each feeding row's last sampled token; the others padding under mask 0."""
        on = torch.tensor(feeding, device=self.device)  # [R]
        tok = torch.tensor([ep.ids[-1] if f else self.pad for ep, f in zip(self.eps, feeding)], device=self.device)
        self.mask = torch.cat([self.mask, on[:, None].to(self.mask.dtype)], dim=1)  # [R, L + 1]
        self.last = self.last + on[:, None].to(self.last.dtype)  # waiting rows: any position, masked
        out = self.hf(input_ids=tok[:, None], attention_mask=self.mask, past_key_values=self.cache, use_cache=True,
                      logits_to_keep=1, position_ids=self.last)
        self.logits = out.logits[:, -1].float()  # [R, V] (waiting rows': unused)
        for ep, f in zip(self.eps, feeding):
            ep.fed = len(ep.ids) if f else ep.fed

    def keep(self, rows: list[int]) -> None:
        """Only `rows` (indices of the live rows) stay."""
        if len(rows) == len(self.eps):
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.logits, self.last = self.mask[idx], self.logits[idx], self.last[..., idx, :]
        self.eps = [self.eps[r] for r in rows]

    def extend(self, media: list[dict[str, torch.Tensor]]) -> None:
        """One forward [R, K] of every row's tokens not yet in the cache (its last token and observation), each
        chunk left-padded (mask 0), the images' tensors (`media`, per row) concatenated in row order, positions
        from each row's rope index over its own whole sequence."""
        chunks, places = [], []
        for ep in self.eps:
            full, positions = ep.inputs(self.hf, self.device)  # [1, P + T], [A, 1, P + T]
            k = len(ep.ids) - ep.fed
            chunks.append(full["input_ids"][0, -k:])
            places.append(positions[..., -k:])
        width = max(c.shape[0] for c in chunks)
        pad = lambda x, v: torch.nn.functional.pad(x, (width - x.shape[-1], 0), value=v)  # noqa: E731
        ids = torch.stack([pad(c, self.pad) for c in chunks])  # [R, K]
        on = torch.stack([pad(torch.ones_like(c), 0) for c in chunks])  # [R, K]
        positions = torch.cat([pad(p, 0) for p in places], dim=-2)  # [A, R, K]
        keys = dict.fromkeys(k for m in media for k in m)  # pixel_values, image_grid_thw, … (none: no row has images)
        new = {k: torch.cat([m[k] for m in media if k in m]).to(self.device) for k in keys}
        self.mask = torch.cat([self.mask, on.to(self.mask.dtype)], dim=1)  # [R, L + K]
        out = self.hf(input_ids=ids, attention_mask=self.mask, past_key_values=self.cache, use_cache=True,
                      logits_to_keep=1, position_ids=positions, **new)
        self.logits, self.last = out.logits[:, -1].float(), positions[..., -1:]
        for ep in self.eps:
            ep.fed = len(ep.ids)


def run_batch(hf, policy, prompts, eps: list, n: int, draw: Draw) -> None:
    """Run the episodes (`mmrl.rollout.multiturn._Episode`, B prompts × n rows) to their ends on one cache."""
    batch = Batch(hf, policy, prompts, eps, n)
    while batch.eps:
        ended = [ep.begin() for ep in batch.eps]  # per live row: why its turn ended (None: it samples)
        while any(e is None for e in ended):
            js = [j for j, e in enumerate(ended) if e is None]
            live = [batch.eps[j] for j in js]
            picks, logps = draw(batch.logits[js], [ep.row for ep in live], [len(ep.ids) for ep in live])
            for j, ep, pick, logp in zip(js, live, picks, logps):
                ended[j] = ep.sampled(pick, logp)
            if all(e is not None for e in ended):
                break
            batch.step([e is None for e in ended])
        observations = [ep.end_turn(e) for ep, e in zip(batch.eps, ended)]
        batch.keep([j for j, o in enumerate(observations) if o is not None])
        if batch.eps:
            batch.extend([o.media for o in observations if o is not None])


def batched(sampler) -> Draw:
    """One draw per step for every live row from the `hf` sampler over all N rows (`Sampler.draw` with `rows`),
    each row at its own position t."""
    def draw(logits: torch.Tensor, rows: list[int], t: list[int]) -> tuple[list[int], list[float]]:
        picks = sampler.draw(logits, t, rows)  # [R]
        return picks.tolist(), sampler.logprobs.pop().tolist()

    return draw


def each(samplers: list) -> Draw:
    """A batch draw from each row's own sampler (`draw(logits [1, V], t) -> ids [1]`, log-probs recorded)."""
    def draw(logits: torch.Tensor, rows: list[int], t: list[int]) -> tuple[list[int], list[float]]:
        picks = [int(samplers[r].draw(logits[j:j + 1], tj)[0]) for j, (r, tj) in enumerate(zip(rows, t))]
        return picks, [float(samplers[r].logprobs[-1][0]) for r in rows]

    return draw

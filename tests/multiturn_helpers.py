"""Helpers of the multi-turn tests (hf and vLLM loops, the trainer's wiring): a test tool whose observations hold
none, one or two images of different sizes, a call format the random zoo models write by chance, and the processor's
one pass over a trajectory's whole conversation — what every multi-turn mechanics test compares against."""

from __future__ import annotations

from PIL import Image

from mmrl.perception.images import load_image

# any vowel is a call of `look` (random zoo models write calls by chance), and a turn ends at its first vowel
VOWELS = {"pattern": "(?P<letter>[aeiou])", "tool": "look"}
STOPS = list("aeiou")


def look(arguments, state):
    """`a`: text only; `e`: one picture; `i`: two of different sizes; other letters: one small picture."""
    n = {"a": 0, "e": 1, "i": 2}.get(arguments["letter"], 1)
    sizes = [(56, 84), (112, 56)] if n == 2 else [(70, 42)] * n
    return [Image.new("RGB", s, (60 * k + 20, 90, 140)) for k, s in enumerate(sizes)] + [f"saw {len(state.images)}"]


def one_pass(policy, prompt, traj):
    """The processor's ids and tensors of the whole conversation, templated and tokenised at once (a trajectory ends
    with a policy turn: results of its last turn, e.g. an observation over the budget, were not appended)."""
    msgs, tool_images = list(prompt.sample.messages), []
    for k, turn in enumerate(traj.turns):
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": turn.text}]})
        for r in turn.results if k < len(traj.turns) - 1 else []:
            content = [{"type": "image"} for _ in r.images] + ([{"type": "text", "text": r.text}] if r.text else [])
            msgs.append({"role": "tool", "content": content})
            tool_images += [im.image for im in r.images]
    images = [load_image(s, sample_id="x") for s in prompt.sample.media("image")] + tool_images
    text = policy.processor.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
    return policy.processor(text=[text], images=images, return_tensors="pt")

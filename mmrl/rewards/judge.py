"""The `judge` reward: a model served behind an OpenAI-compatible chat endpoint scores each completion.

For rewards no rule can compute — open-ended answers, captions, Perception-R1-style visual-perception quality —
a judge model (a vLLM / SGLang / llama.cpp / hosted server *the user runs*; mmrl never starts or downloads one)
reads a rubric with the question, the reference answer and the completion (optionally the image too) and replies
with a score. Requests go out concurrently (`concurrency`), each with a timeout and retries with exponential
backoff on connection errors, timeouts, HTTP 429 and 5xx; identical requests within a call are sent once.

Values: the last number in the judge's reply, clipped to [0, `max_score`] and divided by it → [0, 1]. A
completion whose request still fails after the retries, or whose reply holds no number, gets None (not
applicable: a judge outage is not the policy's fault) and is counted as `parse_fail`; when *every* request of
a call fails the reward raises, so the term's `on_error` policy decides (and counts it). Not pure: it is left
out of the purity tests, and its results are only as deterministic as the server (use temperature 0).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from mmrl.rewards.parsed import note_parse
from mmrl.rewards.parsing import extract_answer
from mmrl.rewards.registry import register

CHECKLIST_RUBRIC = (
    "Question: {question}\n"
    "Response: {response}\n"
    "Does the response clearly and correctly reflect this visual information: {item}\n"
    "Reply yes or no."
)
DEFAULT_RUBRIC = (
    "You are grading an answer to a question about an image.\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Answer to grade: {response}\n"
    "Score how correct and complete the answer is, from 0 (wrong) to {max_score} (fully correct). "
    "Reply with the score only."
)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_OUT_OF = re.compile(r"\s*(?:/|out\s+of)\s*\d+(?:\.\d+)?\W*$", re.IGNORECASE)
_RETRY_HTTP = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RESPONSE_CHARS = 16 * 1024  # the part of each completion shown to the judge


class JudgeError(RuntimeError):
    """Every judge request of a call failed (unreachable server, bad model name, …)."""


def endpoint(url: str) -> str:
    """`…/chat/completions` for a base URL like `http://host:8000/v1` (a full endpoint URL is kept)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def score_from_reply(reply: Any, max_score: float) -> float | None:
    """The last number in the reply text, clipped to [0, max_score] and scaled to [0, 1]; None if there is none.

    >>> score_from_reply("Reasoning… Score: 7", 10), score_from_reply("12/10", 10), score_from_reply("n/a", 10)
    (0.7, 1.0, None)
    >>> score_from_reply("I'd say 4 out of 5.", 5)
    0.8
    """
    if not isinstance(reply, str):
        return None
    tail = _OUT_OF.sub("", reply[-4096:])  # "7/10", "7 out of 10" → "7"
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    value = float(numbers[-1])
    if not math.isfinite(value):  # "1e999"
        return None
    return min(max(value, 0.0), max_score) / max_score


def yes_no(reply: Any) -> float | None:
    """1.0 for a reply that starts with yes (or is a bare 1), 0.0 for no (or 0), None otherwise.

    >>> yes_no("Yes, it does."), yes_no("**No**"), yes_no("1"), yes_no("maybe")
    (1.0, 0.0, 1.0, None)
    """
    if not isinstance(reply, str):
        return None
    head = reply.strip().strip("*_`'\" ").casefold()[:16]
    if head.startswith(("yes", "1")) and not head.startswith(("10", "1.")):
        return 1.0
    if head.startswith(("no", "0")):
        return 0.0
    return None


def _checklist_items(reference: Any, key: str) -> list[str]:
    """The non-empty strings under `reference[key]` (a list, or one string), at most 32."""
    items = reference.get(key) if isinstance(reference, dict) else None
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, (list, tuple)):
        return []
    return [str(i)[:2048] for i in items if isinstance(i, (str, int, float)) and str(i).strip()][:32]


def _image_parts(sample: Any, max_images: int) -> list[dict[str, Any]]:
    from mmrl.perception.images import load_image

    parts = []
    for src in (sample.media("image") if hasattr(sample, "media") else [])[:max_images]:
        image = load_image(src, sample_id=str(getattr(sample, "id", "?")))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def build_request(
    *, model: str, text: str, temperature: float, max_tokens: int, images: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON body of one chat-completions request (OpenAI schema: `model`, `messages`, `temperature` …)."""
    content: Any = [*images, {"type": "text", "text": text}] if images else text
    return {
        "model": model, "messages": [{"role": "user", "content": content}],
        "temperature": temperature, "max_tokens": max_tokens,
    }


def _post(url: str, body: dict[str, Any], *, api_key: str | None, timeout_s: float, retries: int,
          backoff_s: float) -> str:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                payload = json.loads(resp.read().decode("utf-8", errors="replace"))
            return payload["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as exc:
            last = exc
            if exc.code not in _RETRY_HTTP:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            last = exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:  # not an OpenAI-shaped reply
            last = exc
            break
    raise JudgeError(f"judge request to {url} failed: {last!r}")


@register("judge", pure=False)
def judge(
    completions: list[str],
    *,
    answer: Sequence[Any] | None = None,
    prompts: Sequence[str] | None = None,
    samples: Sequence[Any] | None = None,
    url: str | None = None,
    model: str | None = None,
    rubric: str = DEFAULT_RUBRIC,
    max_score: float = 10.0,
    checklist: str | None = None,
    checklist_rubric: str = CHECKLIST_RUBRIC,
    include_image: bool = False,
    max_images: int = 4,
    answer_only: bool = True,
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 8,
    request_timeout_s: float = 30.0,
    retries: int = 2,
    backoff_s: float = 0.5,
    temperature: float = 0.0,
    max_tokens: int = 32,
    **kwargs: Any,
) -> list[float | None]:
    """A judge model's score of each completion, scaled to [0, 1]. Range [0, 1]; None = judge gave no score.

    r = clip(s, 0, max_score) / max_score, s the last number in the judge's reply to `rubric` formatted with
    `{question}` (the prompt text), `{reference}` (the `answer` column), `{response}` (the `<answer>` block when
    `answer_only`, else the whole completion, capped) and `{max_score}`. `url` is the server's OpenAI base URL
    (`http://host:8000/v1`), `model` the served model name; the API key, if any, is read from `api_key_env`.
    `include_image` sends the prompt's images (PNG data URLs, at most `max_images`) for visual judging.

    Checklist mode (`checklist: KEY`): r = (1/K) Σ_k j_k over the K strings in `answer[KEY]` (e.g. visual facts
    a correct reasoning must mention), j_k ∈ {0, 1} the judge's yes/no to `checklist_rubric` with `{item}` =
    item k; None for a sample without items, or when any item's request failed. This is the visual perception
    reward of Perception-R1 (Xiao et al., arXiv:2506.07218; a text-only judge deciding whether the response
    reflects each annotated key visual fact). Model-judged rewards in general: RLAIF, Perception-R1 (Yu et al.)
    """
    if not url or not model:
        raise ValueError("judge: set kwargs.url (e.g. http://localhost:8000/v1) and kwargs.model (the served name)")
    if not max_score > 0:
        raise ValueError(f"judge: max_score must be > 0, got {max_score!r}")
    n = len(completions)
    questions = list(prompts) if prompts is not None else [""] * n
    refs = list(answer) if answer is not None else [None] * n
    sample_list = list(samples) if samples is not None else [None] * n
    if not (len(questions) == len(refs) == len(sample_list) == n):
        raise ValueError(f"judge: columns must have {n} values (prompts, answer, samples)")
    template = checklist_rubric if checklist else rubric

    def requests_for(text: Any, question: Any, ref: Any, sample: Any) -> list[str] | None:
        """The JSON bodies that decide one completion's value: one (rubric) or one per checklist item."""
        response = _response(text, answer_only)
        items = _checklist_items(ref, checklist) if checklist else [None]
        if not items:
            return None  # nothing to check for this sample: not applicable
        images = _image_parts(sample, max_images) if include_image and sample is not None else None
        filled = [template.format(question=question or "", reference="" if ref is None else ref, response=response,
                                  max_score=f"{max_score:g}", item=item) for item in items]
        return [json.dumps(build_request(model=model, text=t, temperature=temperature, max_tokens=max_tokens,
                                         images=images), sort_keys=True) for t in filled]

    requests = [requests_for(*row) for row in zip(completions, questions, refs, sample_list)]
    read = yes_no if checklist else functools.partial(score_from_reply, max_score=float(max_score))
    api_key = os.environ.get(api_key_env) if api_key_env else None
    results = _ask_all(requests, read, url=endpoint(url), api_key=api_key, concurrency=concurrency,
                       timeout_s=request_timeout_s, retries=retries, backoff_s=backoff_s)
    return [_value(bodies, results) for bodies in requests]


def _response(text: Any, answer_only: bool) -> str:
    """What the judge reads of a completion: its `<answer>` block when `answer_only` (else all of it), capped."""
    text = text if isinstance(text, str) else ""
    block = extract_answer(text) if answer_only else None
    return (text if block is None else block)[:MAX_RESPONSE_CHARS]


def _ask_all(requests: list[list[str] | None], read: Callable[[Any], float | None], *, url: str,
             api_key: str | None, concurrency: int, timeout_s: float, retries: int,
             backoff_s: float) -> dict[str, float | None | JudgeError]:
    """Each distinct request body sent once, concurrently: body → the value `read` from the reply, or the error.

    Raises the first JudgeError when every request failed (the term's `on_error` decides)."""
    unique = list(dict.fromkeys(b for bodies in requests if bodies for b in bodies))  # identical ones go once

    def ask(body: str) -> float | None | JudgeError:
        try:
            reply = _post(url, json.loads(body), api_key=api_key, timeout_s=timeout_s, retries=retries,
                          backoff_s=backoff_s)
        except JudgeError as exc:
            return exc
        return read(reply)

    with ThreadPoolExecutor(max_workers=max(1, min(int(concurrency), len(unique) or 1))) as pool:
        results = dict(zip(unique, pool.map(ask, unique)))
    failures = [r for r in results.values() if isinstance(r, JudgeError)]
    if unique and len(failures) == len(unique):
        raise failures[0]
    return results


def _value(bodies: list[str] | None, results: dict[str, float | None | JudgeError]) -> float | None:
    """One completion's value: the mean of its requests' values; None when it has none or any of them failed."""
    if bodies is None:
        return None
    values = [results[b] for b in bodies]
    ok = all(isinstance(v, float) for v in values)
    note_parse(truncated=False, failed=not ok)
    return sum(values) / len(values) if ok else None

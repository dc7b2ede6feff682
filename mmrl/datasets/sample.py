"""The `Sample` record every loader and generator produces.

`messages` is chat format: a list of `{"role": ..., "content": [parts]}` where a part is
`{"type": "text", "text": str}`, `{"type": "image", "image": path | PIL.Image}` or
`{"type": "video", "video": path | frames}`. Media stay unloaded (paths) until the processor needs them.
`answer` is the ground truth; coordinates in it are in *original* image pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mmrl.errors import BadSampleError  # noqa: F401  (re-exported)


@dataclass
class Sample:
    id: str
    messages: list[dict[str, Any]]
    answer: Any = None
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # where the sample was loaded from ("train file x.parquet", "eval task rotation"; set by `load_source`), so
    # load-time checks can name the source that lacks something; not part of the sample's identity
    source: str = field(default="", compare=False, repr=False)

    def media_kinds(self) -> list[str]:
        """"image" / "video" for each media part, in prompt order (what `answer["media"]` indexes)."""
        return [
            part["type"]
            for msg in self.messages
            if isinstance(msg.get("content"), list)
            for part in msg["content"]
            if isinstance(part, dict) and part.get("type") in ("image", "video")
        ]

    def media(self, kind: str = "image") -> list[Any]:
        """The media parts of one kind ("image" or "video"), in prompt order."""
        return [
            part[kind]
            for msg in self.messages
            if isinstance(msg.get("content"), list)
            for part in msg["content"]
            if isinstance(part, dict) and part.get("type") == kind
        ]


def check_template(template: str) -> None:
    """A question template must contain `{problem}` and no other `{field}` (braces doubled as `{{`, `}}`)."""
    try:
        out = template.format(problem="\0")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"template {template!r} is not valid: use {{problem}} for the question and double other "
                         f"braces ({exc!r})") from None
    if "\0" not in out:
        raise ValueError(f"template {template!r} has no {{problem}} placeholder")


def with_template(sample: Sample, template: str) -> Sample:
    """The sample with its question (the last text part of its last user turn) rewritten as
    `template.format(problem=question)`."""
    messages = [dict(m, content=list(m["content"])) if isinstance(m.get("content"), list) else dict(m)
                for m in sample.messages]
    for msg in reversed(messages):
        if msg.get("role") != "user":
            continue
        if isinstance(msg.get("content"), str):
            msg["content"] = template.format(problem=msg["content"])
            return dataclasses.replace(sample, messages=messages)
        for k in range(len(msg["content"]) - 1, -1, -1):
            part = msg["content"][k]
            if isinstance(part, dict) and part.get("type") == "text":
                msg["content"][k] = dict(part, text=template.format(problem=part["text"]))
                return dataclasses.replace(sample, messages=messages)
    raise BadSampleError(sample.id, "has no question text for the template")


def with_system(sample: Sample, text: str) -> Sample:
    """The sample with `text` as its system prompt (a system turn it already has is kept)."""
    if any(m.get("role") == "system" for m in sample.messages):
        return sample
    system = {"role": "system", "content": [{"type": "text", "text": text}]}
    return dataclasses.replace(sample, messages=[system, *sample.messages])

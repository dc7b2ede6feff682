"""The `Sample` record every loader and generator produces.

`messages` is chat format: a list of `{"role": ..., "content": [parts]}` where a part is
`{"type": "text", "text": str}`, `{"type": "image", "image": path | PIL.Image}` or
`{"type": "video", "video": path | frames}`. Media stay unloaded (paths) until the processor needs them.
`answer` is the ground truth; coordinates in it are in *original* image pixels.
"""

from __future__ import annotations

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

    def media(self, kind: str = "image") -> list[Any]:
        """The media parts of one kind ("image" or "video"), in prompt order."""
        return [
            part[kind]
            for msg in self.messages
            if isinstance(msg.get("content"), list)
            for part in msg["content"]
            if isinstance(part, dict) and part.get("type") == kind
        ]

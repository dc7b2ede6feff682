"""A diagnostic tool for the `zoom` task (issue 19): whatever region the policy names, it returns the region that holds
the red marker — the search taken away, so that a run measures only whether RL learns to read the crop it is shown.

    mmrl train recipes/thinking_with_images.yaml run.name=zoom-oracle \
      "rollout.tools=[{fn: benchmarks/zoom_oracle_tool.py:oracle_region, name: region, kwargs: {caption: false}}]" \
      "rewards=[{fn: rotation_exact, name: accuracy}, {fn: format, weight: 0.1}]"

(README, "Thinking with images": accuracy stayed at chance this way too, while the single-turn run on the same
pixels learned.) Not a tool for training: it reads the answer off the image's colours.
"""

from __future__ import annotations

from mmrl.datasets.zoom import MARKER
from mmrl.tools.builtin import region


def oracle_region(arguments, state, *, caption: bool = False, grid: int = 2):
    """`region` of the grid cell with the most marker-red pixels of the prompt's image (every 4th pixel sampled)."""
    image = state.images[0].image.convert("RGB")
    w, h = image.size
    px = image.load()

    def red(q: int) -> int:
        row, col = divmod(q - 1, grid)
        return sum(px[x, y] == MARKER for y in range(row * h // grid, (row + 1) * h // grid, 4)
                   for x in range(col * w // grid, (col + 1) * w // grid, 4))

    best = max(range(1, grid * grid + 1), key=red)
    return region({"region": best}, state, caption=caption, grid=grid)

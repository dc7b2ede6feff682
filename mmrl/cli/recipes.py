"""Bundled recipes: found beside the package (a source checkout or an editable install), by file or by name."""

from __future__ import annotations

from pathlib import Path


RECIPES = Path(__file__).resolve().parents[2] / "recipes"  # bundled recipes, beside the package
DEFAULT_RECIPE = RECIPES / "demo.yaml"


def bundled_recipes() -> dict[str, Path]:
    """Bundled recipe name → file: `recipes/NAME.yaml` as NAME, `recipes/algorithms/NAME.yaml` as algorithms/NAME."""
    if not RECIPES.is_dir():
        return {}
    out = {p.stem: p for p in sorted(RECIPES.glob("*.yaml"))}
    out.update({f"algorithms/{p.stem}": p for p in sorted((RECIPES / "algorithms").glob("*.yaml"))})
    return out


def resolve_recipe(arg: str) -> str:
    """A recipe argument → a file: the path as given when it exists, else a bundled recipe's name (`grounding`,
    `algorithms/grpo`, with or without `.yaml`), so recipes can be named from any directory. ValueError names
    the closest bundled recipe."""
    if Path(arg).exists():
        return arg
    from mmrl.registry import closest

    name = arg.removeprefix("recipes/").removesuffix(".yaml")
    found = bundled_recipes()
    if name in found:
        return str(found[name])
    hint = closest(name, list(found))
    extra = f"; did you mean {hint!r}?" if hint else ""
    raise ValueError(f"recipe {arg!r}: no such file and no bundled recipe of that name{extra} (`mmrl list recipes`)")

"""The house rules of docs/architecture.md, checked on the source: dependencies without cycles, small files and
functions, a package root that keeps only what every part uses, and a trainer built from collaborators."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmrl"
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_ROOT_MODULES = 400, 80, 6


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The mmrl modules `path` imports, at the top or inside functions (lazy imports count)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names}
    return {m for m in out if m in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_mmrl_modules():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert cycles(graph) == []


# which parts a part must never import (docs/architecture.md, "Dependencies"): they point down
NEVER = {
    "config": {"train", "cli", "model", "rollout", "rewards", "datasets", "algorithms", "perception", "kernels",
               "plugins", "tools"},
    "algorithms": {"train", "cli", "model", "rollout", "rewards", "datasets", "tools"},
    "rewards": {"train", "cli", "model", "tools"},
    "datasets": {"train", "cli", "model", "tools"},
    "tools": {"train", "cli", "model", "rollout", "rewards", "datasets", "algorithms"},
    # plug-in machinery shared by rewards and tools: it sits with the root, below every part
    "plugins": {"train", "cli", "model", "rollout", "rewards", "datasets", "algorithms", "perception", "kernels",
                "tools", "config"},
    **{part: {"train", "cli"} for part in ("model", "rollout")},
    **{part: {"train", "cli", "tools"} for part in ("perception", "kernels", "runtime", "registry", "errors")},
}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_dependencies_point_down():
    modules = _modules()
    upward = sorted((name, dep) for name, path in modules.items() for dep in _imports(path, modules)
                    if _part(dep) in NEVER.get(_part(name), set()))
    assert len(modules) > 100 and "mmrl.train.trainer" in modules  # the scan sees the package
    assert upward == []


def test_no_file_over_400_lines_and_no_function_over_80():
    long_files, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append((str(path.relative_to(PACKAGE)), text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append((str(path.relative_to(PACKAGE)), node.name, lines))
    assert long_files == [] and long_functions == []


def test_the_package_root_keeps_only_what_every_part_uses():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


def test_the_steps_are_built_from_collaborators_not_mixins():
    from mmrl.train.rl_step import RLStep
    from mmrl.train.sft_step import SFTStep
    from mmrl.train.trainer import Trainer

    assert Trainer.__bases__ == RLStep.__bases__ == SFTStep.__bases__ == (object,)


def test_no_benchmark_script_shadows_a_package_of_the_stack():
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path: a script named like an installed top-level package
    (e.g. Hugging Face's `kernels`, which transformers imports) or a standard-library module would be imported in its
    place. Every installed distribution's top-level names and the standard library are checked, plus the ones the
    stack may bring that are not installed here."""
    import sys
    from importlib.metadata import packages_distributions

    taken = set(packages_distributions()) | set(sys.stdlib_module_names)
    taken |= {"kernels", "vllm", "flash_attn", "liger_kernel", "trl", "peft", "accelerate", "decord", "deepspeed"}
    scripts = {p.stem for p in (PACKAGE.parent / "benchmarks").glob("*.py")}
    assert "vs_trl" in scripts and "transformers" in taken  # the check sees both sides
    assert scripts & taken == set()

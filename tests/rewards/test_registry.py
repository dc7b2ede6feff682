"""Reward specs: registry names, `pkg.module:function`, `path/file.py:function`, and their errors."""

from __future__ import annotations

import sys
import textwrap

import pytest

from mmrl.registry import UnknownNameError
from mmrl.rewards import REWARDS, RewardSpecError, get, names, register
from mmrl.rewards.builtin import iou

PLUGIN = textwrap.dedent(
    """
    def count_bonus(completions, **kwargs):
        return [float(len(c)) for c in completions]

    NOT_CALLABLE = 3
    """
)


def test_names_lists_builtins():
    assert {"format", "answer_match", "iou"} <= set(names())
    assert names() == sorted(names())


def test_registry_name():
    assert get("iou") is iou


def test_unknown_name_did_you_mean():
    with pytest.raises(UnknownNameError) as err:
        get("iuo")
    msg = str(err.value)
    assert "did you mean 'iou'" in msg and "answer_match" in msg and "file.py:function" in msg


def test_register_decorator():
    @register("test_registry_tmp_reward")
    def fn(completions, **kwargs):
        return [0.0] * len(completions)

    try:
        assert get("test_registry_tmp_reward") is fn
        with pytest.raises(ValueError, match="twice"):
            register("test_registry_tmp_reward")(fn)
    finally:
        REWARDS._items.pop("test_registry_tmp_reward")  # keep the global registry clean for other tests


def test_module_spec(tmp_path, monkeypatch):
    pkg = tmp_path / "my_reward_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        fn = get("my_reward_pkg.rewards:count_bonus")
        assert fn(["ab", "c"]) == [2.0, 1.0]
        with pytest.raises(RewardSpecError, match="no attribute 'missing'.*count_bonus"):
            get("my_reward_pkg.rewards:missing")
        with pytest.raises(RewardSpecError, match="not callable"):
            get("my_reward_pkg.rewards:NOT_CALLABLE")
    finally:
        for name in [m for m in sys.modules if m.startswith("my_reward_pkg")]:
            del sys.modules[name]
    assert get("mmrl.rewards.builtin:iou") is iou
    with pytest.raises(RewardSpecError, match="no module named 'no_such_pkg_xyz.sub'"):
        get("no_such_pkg_xyz.sub:fn")


def test_module_spec_with_broken_import(tmp_path, monkeypatch):
    (tmp_path / "broken_reward_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardSpecError, match="importing 'broken_reward_mod' failed.*no_such_dependency_xyz"):
        get("broken_reward_mod:fn")


def test_file_spec_relative_and_absolute(tmp_path, monkeypatch):
    plugin = tmp_path / "sub" / "my_reward.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    fn = get("sub/my_reward.py:count_bonus")
    assert fn(["abc"]) == [3.0]
    assert get("./sub/my_reward.py:count_bonus") is fn  # loaded once per file
    assert get(f"{plugin}:count_bonus") is fn
    (tmp_path / "top.py").write_text(PLUGIN)
    assert get("top.py:count_bonus")(["a"]) == [1.0]


def test_file_spec_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plug.py").write_text(PLUGIN)
    (tmp_path / "bad.py").write_text("def broken(:\n")
    with pytest.raises(RewardSpecError, match="does not exist"):
        get("missing.py:fn")
    with pytest.raises(RewardSpecError, match="no attribute 'nope'"):
        get("plug.py:nope")
    with pytest.raises(RewardSpecError, match="not callable"):
        get("plug.py:NOT_CALLABLE")
    with pytest.raises(RewardSpecError, match="executing"):
        get("bad.py:broken")
    with pytest.raises(RewardSpecError, match="no function"):
        get("plug.py")
    with pytest.raises(RewardSpecError, match="must look like"):
        get("plug.py:")
    with pytest.raises(RewardSpecError, match="non-empty"):
        get("  ")

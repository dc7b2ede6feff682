"""The name → object registry: lookups, did-you-mean errors, duplicates, sorted names."""

from __future__ import annotations

import pytest

from mmrl.registry import Registry, UnknownNameError, closest


def make() -> Registry:
    reg: Registry = Registry("widget")
    for name in ("zeta", "alpha", "group_norm", "group_center"):
        reg.register(name)(lambda name=name: name)
    return reg


def test_register_returns_object_and_get_finds_it():
    reg: Registry = Registry("widget")

    @reg.register("f")
    def f():
        return 1

    assert f() == 1 and reg.get("f") is f and "f" in reg and "g" not in reg


def test_names_sorted_and_iteration():
    reg = make()
    assert reg.names() == ["alpha", "group_center", "group_norm", "zeta"]
    assert list(reg) == reg.names()


def test_duplicate_registration_fails_and_keeps_first():
    reg = make()
    first = reg.get("alpha")
    with pytest.raises(ValueError, match="widget 'alpha' is registered twice"):
        reg.register("alpha")(lambda: None)
    assert reg.get("alpha") is first


def test_unknown_name_did_you_mean_and_valid_list():
    with pytest.raises(UnknownNameError) as err:
        make().get("group_nrom")
    msg = str(err.value)
    assert msg.startswith("unknown widget 'group_nrom'")
    assert "did you mean 'group_norm'?" in msg
    assert "(valid: alpha, group_center, group_norm, zeta)" in msg


def test_unknown_name_without_suggestion():
    with pytest.raises(UnknownNameError) as err:
        make().get("qqqqqqq")
    msg = str(err.value)
    assert "did you mean" not in msg and "valid: alpha" in msg


def test_unknown_name_error_is_a_key_error_with_plain_message():
    with pytest.raises(KeyError) as err:
        make().get("x")
    assert not str(err.value).startswith(("'", '"'))  # KeyError would quote its message


def test_empty_registry():
    with pytest.raises(UnknownNameError, match=r"valid: \)"):
        Registry("widget").get("a")


def test_closest():
    assert closest("lrr", ["lr", "seed", "lr_schedule"]) == "lr"
    assert closest("qwen2vl", ["qwen2_vl", "llava"]) == "qwen2_vl"
    assert closest("xyz", ["alpha", "beta"]) is None
    assert closest("a", []) is None

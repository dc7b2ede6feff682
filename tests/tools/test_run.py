"""Plug-in tools that misbehave (`mmrl.tools.run`, `toolbox`): each failure is an error result the policy sees and a
counted metric, never an exception; plug-ins run isolated like rewards, with timeouts and restarts."""

from __future__ import annotations

import textwrap

import pytest
from PIL import Image

from mmrl.config import ToolConfig
from mmrl.tools import ImageLimits, ToolCall, Toolbox, ToolResult, TrajectoryState, make_tool, run_tool
from mmrl.tools.checks import check_call_format, check_tools

PLUGIN = """
    import time
    from PIL import Image
    from mmrl.tools import ToolArgumentError

    def describe(arguments, state, prefix="seen"):
        turned = state.images[-1].image.transpose(Image.Transpose.ROTATE_90)
        return [f"{prefix} {len(state.images)} images, {state.calls} calls", turned]

    describe.schema = {"description": "Describe the latest image.",
                       "parameters": {"type": "object", "properties": {"detail": {"type": "string"}}}}

    def finish(arguments, state):
        return {"text": "done", "reward": 0.5, "done": True}

    def misbehave(arguments, state):
        how = arguments["how"]
        if how == "raise":
            raise ZeroDivisionError("plug-in bug")
        if how == "refuse":
            raise ToolArgumentError("how must be polite")
        if how == "hang":
            time.sleep(60)
        if how == "garbage":
            return {1, 2}
        if how == "bad reward":
            return {"text": "x", "reward": float("nan")}
        if how == "unpicklable":
            return lambda: 0
        if how == "huge":
            return Image.new("RGB", (300, 300))
        return "fine"
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("tool_plugins") / "tools.py"
    path.write_text(textwrap.dedent(PLUGIN))
    return path


@pytest.fixture(scope="module")
def misbehave(plugin):
    tool = make_tool(f"{plugin}:misbehave", timeout_s=1)
    yield tool
    tool.close()


def _state() -> TrajectoryState:
    return TrajectoryState.start([Image.new("RGB", (64, 48), "red")], limits=ImageLimits("qwen2_vl", 16, 200 * 200))


class _Metrics:
    def __init__(self):
        self.counts: dict[str, int] = {}

    def count(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1


@pytest.mark.parametrize("how, says", [
    ("raise", "tool 'misbehave' failed (ZeroDivisionError: plug-in bug)"),
    ("refuse", "Error: how must be polite"),
    ("garbage", "returned something that is not a tool result (a set)"),
    ("bad reward", "reward nan is not a finite number"),
    ("unpicklable", "tool 'misbehave' failed"),
    ("huge", "a 300x300 image (90000 pixels), over the limit of 40000 pixels"),
])
def test_a_failing_plug_in_is_an_error_result_and_a_counted_error(misbehave, how, says):
    metrics = _Metrics()
    result = run_tool(misbehave, {"how": how}, _state(), metrics)
    assert result.error is not None and says in result.error and result.text == result.error
    assert result.images == () and result.reward is None and not result.done
    assert metrics.counts == {"tool/misbehave/calls": 1, "tool/misbehave/errors": 1}
    assert "Traceback" not in result.text and "/" not in result.text.split("failed")[-1]  # no paths for the policy


def test_a_hanging_plug_in_times_out_is_counted_and_its_worker_restarts(misbehave):
    metrics = _Metrics()
    before = misbehave.fn._proc
    result = run_tool(misbehave, {"how": "hang"}, _state(), metrics)
    assert result.error == "Error: tool 'misbehave' did not finish within 1 s"
    assert metrics.counts == {"tool/misbehave/calls": 1, "tool/misbehave/timeouts": 1}
    assert not before.is_alive()  # killed and reaped
    assert run_tool(misbehave, {"how": "ok"}, _state(), metrics).text == "fine"  # in a fresh worker
    assert misbehave.fn._proc.pid != before.pid


def test_a_plug_in_gets_the_state_and_returns_images_with_geometry(plugin):
    with Toolbox.from_configs([ToolConfig(fn=f"{plugin}:describe", kwargs={"prefix": "I see"}),
                               ToolConfig(fn=f"{plugin}:finish", isolate="never")]) as box:
        assert [s["function"]["name"] for s in box.schemas()] == ["describe"]  # reported by its worker
        state = _state()
        [call] = box.parse('<tool_call>{"name": "describe", "arguments": {"detail": "all"}}</tool_call>')
        result = box.run(call, state)
        assert result.error is None and result.text == "I see 1 images, 0 calls"
        [image] = result.images
        assert image.image.size == (48, 64) and image.geometry.convention == "qwen2_vl" and image.origin is None
        done = box.run(ToolCall("finish", {}), state.after(result))
        assert done == ToolResult("done", (), 0.5, True)
        unknown = box.run(ToolCall("descibe", {}), state)
        assert "no tool 'descibe'; did you mean 'describe'?" in unknown.error
        assert "no argument 'colour'" in box.run(ToolCall("describe", {"colour": 1}), state).error
        assert box.metrics.pop() == {"tool/describe/calls": 2.0, "tool/describe/errors": 1.0,
                                     "tool/finish/calls": 1.0, "tool/invalid_calls": 1.0}


def test_an_in_process_tool_that_raises_is_contained_too():
    def broken(arguments, state):
        return [][1]

    tool = make_tool("zoom_in")
    tool.fn = broken
    result = run_tool(tool, {"bbox_2d": [0, 0, 1, 1]}, _state())
    assert result.error == "Error: tool 'zoom_in' failed (IndexError: list index out of range)"


def test_a_bad_plug_in_spec_fails_at_start_up(plugin):
    with pytest.raises(Exception, match="no attribute 'missing'"):
        make_tool(f"{plugin}:missing", isolate="never")
    with pytest.raises(Exception, match="did you mean 'zoom_in'"):
        make_tool("zoom_inn")


def test_tool_configs_are_checked_beside_the_registry():
    tools = [ToolConfig(fn="zoom_in", kwargs={"min_sise": 8}), ToolConfig(fn="rotat"),
             ToolConfig(fn="crop", name="zoom_in"), ToolConfig(fn="pkg.mod:fn", name="a b")]
    errors = check_tools(tools, "rollout.tools")
    assert errors[0].startswith("rollout.tools: duplicate tool names")
    assert errors[1].startswith("rollout.tools[0].kwargs.min_sise: unknown option of tool 'zoom_in'; did you mean "
                                "'min_size'? (valid: min_size, max_ratio, default_image)")
    assert any(e.startswith("rollout.tools[1].fn:") and "did you mean 'rotate'" in e for e in errors)
    assert any(e.startswith("rollout.tools[3].name:") for e in errors) and len(errors) == 4
    assert check_call_format("qwen", "k") == [] and check_call_format({"pattern": "("}, "k")[0].startswith("k: ")

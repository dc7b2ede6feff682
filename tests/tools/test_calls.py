"""Reading tool calls from the policy's untrusted text (`mmrl.tools.calls`)."""

from __future__ import annotations

import time

import pytest

from mmrl.tools import CallFormat, ToolCall, call_format, parse_calls


def _qwen(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def test_a_qwen_call_is_read_with_its_arguments_and_span():
    text = "I need a closer look. " + _qwen("zoom_in", '{"bbox_2d": [10, 20.5, 200, 240], "image": 0}')
    [call] = parse_calls(text)
    assert call == ToolCall("zoom_in", {"bbox_2d": [10, 20.5, 200, 240], "image": 0}, call.span)
    assert text[call.span[0]:call.span[1]].startswith("<tool_call>") and call.span[1] == len(text)


def test_several_calls_come_in_order_and_no_call_is_an_empty_list():
    text = _qwen("zoom_in", '{"bbox_2d": [1, 2, 3, 4]}') + " then " + _qwen("rotate", '{"angle": 90}')
    assert [c.name for c in parse_calls(text)] == ["zoom_in", "rotate"]
    assert parse_calls("The answer is <answer>B</answer>.") == []
    assert parse_calls(None) == [] and parse_calls("") == []


def test_a_last_call_left_open_is_read_as_if_closed():
    """Engines may strip the stop string `</tool_call>`."""
    [call] = parse_calls('<tool_call>{"name": "rotate", "arguments": {"angle": 180}}')
    assert call.name == "rotate" and call.arguments == {"angle": 180} and call.error is None


def test_arguments_given_as_a_json_string_are_decoded():
    [call] = parse_calls('<tool_call>{"name": "rotate", "arguments": "{\\"angle\\": 90}"}</tool_call>')
    assert call.arguments == {"angle": 90}


@pytest.mark.parametrize("payload, says", [
    ('{"name": "zoom_in", "arguments": {"bbox_2d": [1, 2, 3, 4]', "not valid JSON"),
    ("", "empty tool call"),
    ('["zoom_in", [1, 2, 3, 4]]', "JSON object"),
    ('{"arguments": {}}', "JSON object"),
    ('{"name": 3, "arguments": {}}', "JSON object"),
    ('{"name": "zoom_in", "arguments": [1, 2]}', "must be a JSON object"),
    ('{"name": "zoom_in", "arguments": {"bbox_2d": [NaN, 0, 1, Infinity]}}', "not finite"),
    ("[" * 50_000, "longer than"),
    ("[" * 5_000 + "]" * 5_000, "not valid JSON"),  # deeper than Python's recursion limit
])
def test_a_malformed_call_is_an_error_the_policy_sees_never_an_exception(payload, says):
    [call] = parse_calls(f"<tool_call>{payload}</tool_call>")
    assert call.error is not None and call.error.startswith("Error:") and says in call.error
    assert call.arguments == {}


def test_an_unknown_tool_name_is_parsed_as_written():
    """The registry, not the parser, refuses it (with a did-you-mean: tests/tools/test_run.py)."""
    [call] = parse_calls(_qwen("zom_in", "{}"))
    assert call.name == "zom_in" and call.error is None


def test_injection_attempts_are_only_text(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"__import__('os').system('touch {marker}')"
    calls = parse_calls(f"<tool_call>{evil}</tool_call>" + _qwen("__import__", f'{{"cmd": "{evil}"}}')
                        + _qwen("zoom_in", '{"bbox_2d": "eval(1+1)"}'))
    assert calls[0].error is not None and "not valid JSON" in calls[0].error
    assert calls[1].name == "__import__" and calls[1].arguments == {"cmd": evil}  # a string, never run
    assert calls[2].arguments == {"bbox_2d": "eval(1+1)"}
    assert not marker.exists()


def test_the_box_format_reads_a_compact_zoom():
    calls = parse_calls("look <box>[10, 20, 30, 40]</box> and <box>1,2,3.5,4</box> <box>cat</box>", "box")
    assert [(c.name, c.arguments) for c in calls] == [
        ("zoom_in", {"bbox_2d": [10, 20, 30, 40]}), ("zoom_in", {"bbox_2d": [1, 2, 3.5, 4]}),
        ("zoom_in", {"bbox_2d": "cat"})]  # the tool refuses the last one, with a message the policy sees


def test_a_custom_format_expresses_the_quadrant_call():
    """The calibration task's `<box>Q</box>` (reference/thinking_with_images.md)."""
    quadrant = call_format({"pattern": r"<box>\s*(?P<quadrant>\d)\s*</box>", "tool": "quadrant"})
    [call] = parse_calls("<think>top left</think><box>1</box>", quadrant)
    assert call == ToolCall("quadrant", {"quadrant": 1}, call.span)


def test_bad_formats_fail_at_construction():
    with pytest.raises(ValueError, match="not a regular expression"):
        CallFormat("(unclosed")
    with pytest.raises(ValueError, match="needs a group"):
        CallFormat("<call>.*</call>")
    with pytest.raises(ValueError, match="unknown tool call format 'hermes'"):
        call_format("hermes")


def test_a_catastrophic_user_pattern_times_out_into_an_error():
    slow = CallFormat(r"(?P<x>(x+x+)+y)", tool="t")
    start = time.monotonic()
    [call] = parse_calls("x" * 5000, slow, timeout_s=0.2)
    assert call.error is not None and "could not be read" in call.error
    assert time.monotonic() - start < 5

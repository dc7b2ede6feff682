"""The `judge` reward against a real local HTTP server speaking the OpenAI chat-completions schema."""

from __future__ import annotations

import doctest
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mmrl.datasets.sample import Sample
from mmrl.rewards import RewardTerm, parse_stats, pure_names, score, value_range
from mmrl.rewards import judge as judge_module
from mmrl.rewards.judge import JudgeError, endpoint, judge


class _Judge(BaseHTTPRequestHandler):
    """Scores 9 when the graded answer contains the reference, else 2. Behaviour switches by answer text:
    `flaky` fails once with 503 then works, `slow` sleeps past the client timeout, `mute` replies without a
    number, `denied` gets a 400 (not retried)."""

    requests: list[dict] = []
    attempts: dict[str, int] = {}

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        content = body["messages"][0]["content"]
        text = content if isinstance(content, str) else content[-1]["text"]
        if "visual information: " in text:  # checklist mode: yes when the item's words occur in the response
            item = text.split("visual information: ")[1].split("\n")[0]
            response = text.split("Response: ")[1].split("\n")[0]
            reply = "Yes." if item in response else "No, it does not."
            return self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})
        graded = text.split("Answer to grade: ")[1].split("\n")[0]
        reference = text.split("Reference answer: ")[1].split("\n")[0]
        n = type(self).attempts[graded] = type(self).attempts.get(graded, 0) + 1
        if graded == "flaky" and n == 1:
            return self._send(503, {"error": "busy"})
        if graded == "denied":
            return self._send(400, {"error": "bad request"})
        if graded == "slow":
            time.sleep(1.5)
        reply = "no idea" if graded == "mute" else f"Score: {9 if reference and reference in graded else 2}"
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Judge.requests, _Judge.attempts = [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _call(url, completions, **kw):
    return judge(completions, answer=kw.pop("answer", ["cat"] * len(completions)),
                 prompts=["What animal?"] * len(completions), url=url, model="judge-7b", backoff_s=0.01, **kw)


def test_scores_scaled_and_request_shape(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sekret")
    out = _call(server, ["<think>hmm</think><answer>a cat</answer>", "<answer>a dog</answer>"], api_key_env="MY_KEY")
    assert out == [0.9, 0.2]
    assert len(_Judge.requests) == 2
    for req in _Judge.requests:
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekret"
        assert req["body"]["model"] == "judge-7b" and req["body"]["temperature"] == 0.0
        assert "Question: What animal?" in req["body"]["messages"][0]["content"]
    graded = sorted(r["body"]["messages"][0]["content"].split("Answer to grade: ")[1].split("\n")[0]
                    for r in _Judge.requests)
    assert graded == ["a cat", "a dog"]  # the <answer> block only, not the reasoning


def test_identical_requests_sent_once_and_retry_on_503(server):
    out = _call(server, ["<answer>cat</answer>"] * 4 + ["<answer>flaky</answer>"])
    assert out == [0.9] * 4 + [0.2]
    assert len(_Judge.requests) == 3  # one for the four identical, two for flaky (503, then 200)


def test_failures_are_none_and_counted(server):
    with parse_stats() as st:
        out = _call(server, ["<answer>cat</answer>", "<answer>slow</answer>", "<answer>mute</answer>",
                             "<answer>denied</answer>"], request_timeout_s=0.5, retries=1)
    assert out == [0.9, None, None, None]
    assert st.calls == 4 and st.failed == 3
    assert _Judge.attempts["denied"] == 1  # a 4xx is not retried
    assert _Judge.attempts["slow"] == 2  # a timeout is


def test_all_failed_raises_so_on_error_decides(server):
    with pytest.raises(JudgeError, match="failed"):
        _call(server, ["<answer>denied</answer>"])
    term = RewardTerm("judge", lambda c, **k: _call(server, c), on_error="zero")
    totals, parts = score([term], ["<answer>denied</answer>"], {})
    assert totals == [0.0] and term.errors == 1


def test_unreachable_server_raises():
    with pytest.raises(JudgeError):
        judge(["x"], url="http://127.0.0.1:9/v1", model="m", retries=0, request_timeout_s=0.5)


def test_images_sent_as_data_urls(server, tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (9, 7), (255, 0, 0)).save(path)
    sample = Sample(id="s0", messages=[{"role": "user", "content": [{"type": "image", "image": str(path)},
                                                                     {"type": "text", "text": "What?"}]}])
    out = _call(server, ["<answer>cat</answer>"], samples=[sample], include_image=True)
    assert out == [0.9]
    content = _Judge.requests[0]["body"]["messages"][0]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[-1]["type"] == "text"


def test_config_errors_and_registry():
    with pytest.raises(ValueError, match="kwargs.url"):
        judge(["x"])
    assert endpoint("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert endpoint("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert "judge" not in pure_names() and value_range("judge") == (0.0, 1.0)
    assert doctest.testmod(judge_module).failed == 0


def test_checklist_mode_averages_yes_no_per_item(server):
    answers = [{"facts": ["red triangle", "two circles"]}, {"facts": ["red triangle", "two circles"]},
               {"facts": []}, {"label": "x"}]
    completions = ["<think>I see a red triangle and two circles</think><answer>3</answer>",
                   "<think>a red triangle only</think><answer>3</answer>", "<answer>3</answer>", "<answer>3</answer>"]
    with parse_stats() as st:
        out = judge(completions, answer=answers, prompts=["Area?"] * 4, url=server, model="j",
                    checklist="facts", answer_only=False)
    assert out == [1.0, 0.5, None, None]  # samples without items get no value
    assert st.calls == 2 and st.failed == 0
    assert len(_Judge.requests) == 4  # two items × two completions

"""Multiple-choice rendering, option shuffling, and the multiple-choice rotation task."""

from __future__ import annotations

import pytest

from mmrl.datasets.mcq import INSTRUCTION, render, shuffle_options
from mmrl.datasets.sample import BadSampleError, Sample
from mmrl.datasets.synthetic import make, random_target_text, target_text


def _mcq() -> Sample:
    gt = {"choice": "B", "options": ["cat", "dog", "cow"], "question": "Which animal?"}
    return Sample(id="s", messages=[{"role": "user", "content": [{"type": "image", "image": "x.png"},
                                                                 {"type": "text", "text": render(gt["question"], gt["options"])}]}],
                  answer=gt)


def test_render_by_hand():
    assert render("Q?", ["x", "y"]) == f"Q?\nA. x\nB. y\n{INSTRUCTION}"
    with pytest.raises(ValueError, match="2-26"):
        render("Q?", ["only"])


def test_shuffle_options_rerenders_text_keeps_images_and_records_the_permutation():
    s = _mcq()
    t = shuffle_options(s, [2, 0, 1])
    assert t.messages[0]["content"][1]["text"] == render("Which animal?", ["cow", "cat", "dog"])
    assert t.messages[0]["content"][0] == s.messages[0]["content"][0]
    assert t.answer["permutation"] == [2, 0, 1] and t.answer["choice"] == "B"  # choice stays in original terms
    assert "permutation" not in s.answer  # the original sample is untouched
    with pytest.raises(ValueError, match="not a permutation"):
        shuffle_options(s, [0, 0, 1])
    with pytest.raises(BadSampleError, match="option shuffling"):
        shuffle_options(Sample(id="p", messages=[], answer="90"), [1, 0])


def test_rotation_choices():
    plain = make("rotation", 8, seed=0)
    mc = make("rotation", 8, seed=0, choices=True)
    for p, m in zip(plain, mc):  # the same images and angles; only the question changes
        gt = m.answer
        assert gt["options"][ord(gt["choice"]) - ord("A")] == p.answer
        assert sorted(gt["options"]) == sorted(["0", "90", "180", "270"])
        assert m.messages[0]["content"][1]["text"] == render(gt["question"], gt["options"])
        assert p.messages[0]["content"][0]["image"].tobytes() == m.messages[0]["content"][0]["image"].tobytes()
        assert target_text(m) == f"<answer>{gt['choice']}</answer>"
    import random

    assert random_target_text(mc[0], random.Random(0)) in {f"<answer>{c}</answer>" for c in "ABCD"}


def test_motion_frames_and_shuffle():
    from mmrl.perception.perturb import shuffle_frames

    s = make("motion", 6, seed=0)
    assert {x.answer for x in s} <= {"left", "right"} and s[0].task == "temporal/motion"
    for smp in s:
        frames = smp.media("image")
        assert len(frames) == 3 and frames[0].size == (28, 28)
        cols = []
        for im in frames:  # the dot's column: where the bright pixels are
            px = im.convert("L").load()
            bright = [x for x in range(28) for y in range(28) if px[x, y] > 150]
            cols.append(sum(bright) / len(bright))
        assert (cols[0] < cols[1] < cols[2]) == (smp.answer == "right")
        assert (cols[0] > cols[1] > cols[2]) == (smp.answer == "left")
    t = shuffle_frames(s[0], [2, 0, 1])
    assert [im.tobytes() for im in t.media("image")] == [s[0].media("image")[j].tobytes() for j in (2, 0, 1)]
    assert t.messages[0]["content"][-1] == s[0].messages[0]["content"][-1]  # the text stays
    with pytest.raises(ValueError, match="permutation"):
        shuffle_frames(s[0], [0, 1])
    assert target_text(s[0]) == f"<answer>{s[0].answer}</answer>"

from PIL import Image

from mmrl.datasets.sample import Sample
from mmrl.datasets.sources import drop_overlap, load_source


def _sample(i: int, image) -> Sample:
    return Sample(id=f"s{i}", messages=[{"role": "user", "content": [{"type": "image", "image": image}]}])


def test_drop_overlap_removes_pixel_identical_and_same_file_images():
    train = [_sample(0, Image.new("RGB", (8, 8), (1, 2, 3))), _sample(1, "/data/a.png")]
    held = [
        _sample(2, Image.new("RGB", (8, 8), (1, 2, 3))),  # same pixels as s0
        _sample(3, Image.new("RGB", (8, 8), (9, 9, 9))),
        _sample(4, "/data/a.png"),  # same file as s1
        _sample(5, "/data/b.png"),
    ]
    kept, dropped = drop_overlap(train, held)
    assert [s.id for s in kept] == ["s3", "s5"] and dropped == 2


def test_load_source_synthetic_is_deterministic():
    a, skipped = load_source(task="rotation", path=None, n=3, seed=0, split="eval", kwargs={})
    b, _ = load_source(task="rotation", path=None, n=3, seed=0, split="eval", kwargs={})
    assert skipped == 0 and [s.id for s in a] == [s.id for s in b]
    assert all(x.media()[0].tobytes() == y.media()[0].tobytes() for x, y in zip(a, b))

"""Verified checkpoints: every checkpoint carries a manifest (size + sha256 of each file); `resume_point` takes the
newest one that verifies and names each newer one it skipped and why; damaged files raise CheckpointError naming the
checkpoint and the file; a write that fails on a full disk removes its partial folder and says so."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch

from mmrl.train import checkpoint
from mmrl.errors import CheckpointError


def _save(root: Path, step: int, **kwargs) -> Path:
    """A small real checkpoint: weights, an Adam state after one step, trainer state."""
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(lin.parameters())
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"progress": {"step": step, "stage": 0}, "summary": {}}
    return checkpoint.save(root, step, weights=lin.state_dict(), optimizer=opt.state_dict(), state=state,
                           keep=0, **kwargs)


def _flip_byte(file: Path) -> None:
    """Change one byte in the middle of `file`, keeping its size: only a checksum sees it."""
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def _truncate(file: Path, drop: int = 7) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:-drop])


@pytest.fixture
def two(tmp_path) -> tuple[Path, Path, Path]:
    """(root, step_000001, step_000002): two intact checkpoints."""
    root = tmp_path / "checkpoints"
    return root, _save(root, 1), _save(root, 2)


def test_manifest_lists_every_file_with_its_size_and_sha256(two):
    _, _, new = two
    manifest = json.loads((new / checkpoint.MANIFEST).read_text())["files"]
    on_disk = sorted(p.name for p in new.iterdir() if p.name != checkpoint.MANIFEST)
    assert sorted(manifest) == on_disk == ["model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"]
    for name, entry in manifest.items():
        data = (new / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert checkpoint.verify(new) is None
    assert checkpoint.resume_point(new.parent) == (new, [])


def test_truncated_weights_fall_back_to_the_older_checkpoint(two):
    root, old, new = two
    size = (new / "model.safetensors").stat().st_size
    _truncate(new / "model.safetensors")
    assert checkpoint.latest(root) == new  # the unverified choice would take it
    chosen, notes = checkpoint.resume_point(root)
    assert chosen == old
    assert notes == [f"skipped {new}: model.safetensors: {size - 7} bytes, manifest says {size}"]
    assert checkpoint.load(chosen)["state"]["progress"]["step"] == 1


@pytest.mark.parametrize("name", ["trainer_state.json", "optimizer.pt", "model.safetensors", "rng.pt"])
def test_a_flipped_byte_is_caught_by_the_checksum(two, name):
    root, old, new = two
    _flip_byte(new / name)
    assert checkpoint.verify(new) == f"{name}: checksum differs"
    assert checkpoint.resume_point(root) == (old, [f"skipped {new}: {name}: checksum differs"])


def test_no_intact_checkpoint_raises_naming_the_folder_and_each_reason(two):
    root, old, new = two
    _truncate(new / "optimizer.pt")
    (old / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError) as info:
        checkpoint.resume_point(root)
    message = str(info.value)
    assert f"no intact checkpoint in {root}" in message
    assert f"skipped {new}: optimizer.pt: " in message and "manifest says" in message
    assert f"skipped {old}: trainer_state.json missing" in message


def test_an_empty_or_missing_folder_has_no_resume_point(tmp_path):
    assert checkpoint.resume_point(tmp_path / "nothing") == (None, [])
    (tmp_path / "checkpoints").mkdir()
    assert checkpoint.resume_point(tmp_path / "checkpoints") == (None, [])


@pytest.mark.parametrize("garbage", [b"{not json", b'{"files": []}', b'{"files": {"rng.pt": {"bytes": "x"}}}'])
def test_an_unreadable_manifest_is_a_reason(two, garbage):
    root, old, new = two
    (new / checkpoint.MANIFEST).write_bytes(garbage)
    assert checkpoint.verify(new) == "manifest.json unreadable"
    assert checkpoint.resume_point(root) == (old, [f"skipped {new}: manifest.json unreadable"])


def test_a_checkpoint_from_before_manifests_is_accepted_with_a_note(two):
    root, old, new = two
    for path in (old, new):
        (path / checkpoint.MANIFEST).unlink()
    chosen, notes = checkpoint.resume_point(root)
    assert chosen == new
    assert notes == [f"{new} has no manifest.json (written before checkpoints carried one): its files cannot be"
                     " verified"]
    assert checkpoint.require_intact(new) == notes
    # what can be seen without a manifest still is: a safetensors file shorter than its header says
    size = (new / "model.safetensors").stat().st_size
    _truncate(new / "model.safetensors")
    chosen, notes = checkpoint.resume_point(root)
    assert chosen == old
    assert notes[0] == f"skipped {new}: model.safetensors: {size - 7} bytes, its header says {size}"
    assert "has no manifest.json" in notes[1]


def test_require_intact_names_the_checkpoint_and_the_reason(two):
    _, _, new = two
    assert checkpoint.require_intact(new) == []
    _flip_byte(new / "optimizer.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint {new} is damaged: optimizer.pt: checksum differs"):
        checkpoint.require_intact(new)


@pytest.mark.parametrize("name,damage,reader", [
    ("trainer_state.json", lambda f: f.write_text('{"progress": '), checkpoint.read_state),
    ("trainer_state.json", lambda f: f.unlink(), checkpoint.load),
    ("model.safetensors", _truncate, checkpoint.load),
    ("model.safetensors", _truncate, checkpoint.full_weights),
    ("optimizer.pt", lambda f: f.write_bytes(b"not a zip archive" * 4), checkpoint.load),
    ("optimizer.pt", lambda f: _truncate(f, 300), checkpoint.load),
    ("rng.pt", lambda f: _truncate(f, 100), checkpoint.load),
])
def test_reading_a_damaged_file_names_the_checkpoint_and_the_file(two, name, damage, reader):
    _, _, new = two
    damage(new / name)
    with pytest.raises(CheckpointError, match=f"checkpoint {new}: {name} (missing|cannot be read)"):
        reader(new)


def test_a_sharded_checkpoint_lists_its_shards_and_falls_back_past_a_damaged_one(tmp_path):
    """`save_sharded` in one process (no process group): rank 0's manifest covers the dcp/ folder."""
    from mmrl.model.sharding import Root

    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(lin.parameters())
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    root = tmp_path / "checkpoints"
    old, new = (checkpoint.save_sharded(root, step, root_module=Root(lin), optimizer=opt, main=True, keep=0,
                                        state={"progress": {"step": step}}, barrier=lambda: None) for step in (1, 2))
    listed = json.loads((new / checkpoint.MANIFEST).read_text())["files"]
    assert {"dcp/.metadata", "rng.pt", "trainer_state.json"} <= set(listed)
    shards = sorted(name for name in listed if name.endswith(".distcp"))
    assert shards and checkpoint.resume_point(root) == (new, [])
    _flip_byte(new / shards[0])
    assert checkpoint.resume_point(root) == (old, [f"skipped {new}: {shards[0]}: checksum differs"])
    _truncate(new / shards[0], 5)
    with pytest.raises(CheckpointError, match=f"checkpoint {new}: dcp cannot be read"):
        checkpoint.load_sharded(new, Root(lin), optimizer=opt)


DISK_FULL = {  # what each writer raises when the disk fills up (seen on a 256 KiB tmpfs)
    "safetensors": ("save_file", OSError(errno.ENOSPC, "No space left on device")),
    "safetensors-text": ("save_file", Exception("Error while serializing: I/O error: No space left on device (os "
                                                "error 28)")),
    "torch": ("torch.save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")),
}


@pytest.mark.parametrize("writer", sorted(DISK_FULL))
def test_a_full_disk_removes_the_partial_copy_and_names_both_checkpoints(tmp_path, monkeypatch, writer):
    root = tmp_path / "checkpoints"
    good = _save(root, 1)
    where, err = DISK_FULL[writer]

    def full_disk(*args, **kwargs):  # stands in for the disk, not for any part of mmrl
        raise err

    monkeypatch.setattr(*((checkpoint.torch, "save") if where == "torch.save" else (checkpoint, "save_file")),
                        full_disk)
    with pytest.raises(CheckpointError) as info:
        _save(root, 2)
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(f"could not write checkpoint {root / 'step_000002'}: ")
    assert "no space left on device" in message
    assert message.endswith(f"the partial copy was removed and the previous checkpoint {good} is intact")
    assert not list(root.glob(".tmp-step_*")) and not (root / "step_000002").exists()
    assert checkpoint.resume_point(root) == (good, [])
    assert checkpoint.load(good)["state"]["progress"]["step"] == 1


def test_a_failed_first_checkpoint_says_there_is_none_before_it(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="no space left on device .*there is no earlier checkpoint$"):
        _save(tmp_path / "checkpoints", 1)
    assert not list((tmp_path / "checkpoints").iterdir())


@pytest.mark.integration
def test_a_run_resumes_past_its_truncated_newest_checkpoint(tmp_path, tiny):
    """Two real RL steps, a checkpoint after each; the newest's weights are cut short: the resume point (and
    `mmrl eval RUN`'s choice) is the older one, with a note naming the newer one."""
    from mmrl.cli.evaluation import resolve_source
    from mmrl.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(tiny(run, "stages=[{name: rl, kind: rl, steps: 2}]", "trainer.checkpoint_every=1",
                 "algorithm.kl_coef=0.05"), log=lambda *a: None).run()
    root = run / "checkpoints"
    older, newer = checkpoint.list_complete(root)
    assert (older.name, newer.name) == ("step_000001", "step_000002")
    listed = json.loads((newer / checkpoint.MANIFEST).read_text())["files"]
    assert {"model.safetensors", "reference.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"} <= set(listed)
    assert checkpoint.resume_point(root) == (newer, [])

    _truncate(newer / "model.safetensors", 1000)
    chosen, notes = checkpoint.resume_point(root)
    assert chosen == older
    assert len(notes) == 1 and notes[0].startswith(f"skipped {newer}: model.safetensors: ")
    logged = []
    assert resolve_source(run, log=logged.append) == (run / "config.yaml", older, None)
    assert logged == notes
    with pytest.raises(CheckpointError, match=f"checkpoint {newer} is damaged: model.safetensors"):
        resolve_source(newer, log=logged.append)


def test_mmrl_eval_of_a_run_without_an_intact_checkpoint_is_a_clear_error(tmp_path, tiny, capsys):
    """Before any model loads: exit 1 and one message naming the folder and each checkpoint's reason."""
    from mmrl import cli, config

    run = tmp_path / "run"
    run.mkdir()
    config.dump(tiny(run), run / "config.yaml")
    new = _save(run / "checkpoints", 1)
    _flip_byte(new / "model.safetensors")
    assert cli.main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    assert err == (f"mmrl: error: no intact checkpoint in {run / 'checkpoints'}:\n"
                   f"  skipped {new}: model.safetensors: checksum differs\n")
    assert cli.main(["export", str(new), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"mmrl: error: checkpoint {new} is damaged: model.safetensors: checksum differs\n"

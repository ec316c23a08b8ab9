"""Damaged checkpoints, as a crash or a full disk leaves them (missing index, truncated data, zero-length files):
the resume names them, moves them aside, continues from the newest intact checkpoint and deletes nothing intact;
with none intact it stops with one message instead of starting over."""

import copy
import os

import numpy as np
import pytest

from robustdet_tf import train as train_lib
from robustdet_tf.checkpoints import integrity
from tests.test_train import tiny_config


def train(config, workdir, steps):
    config = copy.deepcopy(config)  # the module's config stays as the fixture made it
    with config.unlocked():
        config.train.steps = steps
    printed = []
    model = train_lib.train_in_workdir(config, str(workdir), printer=printed.append)
    return model, printed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SSD trained 6 steps, checkpoints every 2 steps, 2 kept: ckpt-4 and ckpt-6 (and model.keras)."""
    config = tiny_config()
    workdir = tmp_path_factory.mktemp("run")
    train(config, workdir, 6)
    return config, workdir


def copy_of(workdir, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(workdir, target)
    return target


def checkpoint_files(workdir):
    folder = workdir / "checkpoints"
    return sorted(n for n in os.listdir(folder) if n.startswith("ckpt-"))


def truncate(path, size=None):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size is None else size])


DAMAGES = {
    "missing index": (lambda folder: (folder / "ckpt-6.index").unlink(), "its .index file is missing"),
    "truncated data": (lambda folder: truncate(folder / "ckpt-6.data-00000-of-00001"), "cannot be read"),
    "zero-length index": (lambda folder: truncate(folder / "ckpt-6.index", 0), "its .index file is empty"),
    "zero-length data": (lambda folder: truncate(folder / "ckpt-6.data-00000-of-00001", 0), "cannot be read"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous(trained, tmp_path, case):
    config, original = trained
    workdir = copy_of(original, tmp_path)
    assert checkpoint_files(workdir) == ["ckpt-4.data-00000-of-00001", "ckpt-4.index", "ckpt-6.data-00000-of-00001",
                                         "ckpt-6.index"]
    damage, reason = DAMAGES[case]
    damage(workdir / "checkpoints")
    intact_before = (workdir / "checkpoints" / "ckpt-4.data-00000-of-00001").read_bytes()

    trainer = train_lib.Trainer(config, str(workdir))
    assert trainer.start_step == 4  # the newest intact checkpoint, not step 0
    assert "checkpoint ckpt-6 (step 6) is damaged" in trainer.notes[0]
    assert not any("damaged" in note for note in trainer.notes[1:])
    note = trainer.notes[0]
    assert reason in note and "resuming from the newest intact checkpoint, ckpt-4 (step 4)" in note
    damaged = sorted(os.listdir(workdir / "checkpoints" / "damaged"))
    assert damaged and all(name.startswith("ckpt-6.") for name in damaged)  # moved, not deleted
    assert (workdir / "checkpoints" / "ckpt-4.data-00000-of-00001").read_bytes() == intact_before

    # Training on saves ckpt-6 and ckpt-8 anew; the state file lists only whole checkpoints.
    model, printed = train(config, workdir, 8)
    assert any("is damaged" in line for line in printed) is False  # already sorted out by the Trainer above
    assert "resuming" in " ".join(printed) and printed[-1].startswith("saved ")
    assert checkpoint_files(workdir)[-2:] == ["ckpt-8.data-00000-of-00001", "ckpt-8.index"]
    assert sorted(os.listdir(workdir / "checkpoints" / "damaged")) == damaged


@pytest.mark.slow
def test_the_resume_after_a_damaged_checkpoint_equals_a_run_resumed_from_the_intact_one(trained, tmp_path):
    config, original = trained
    damaged_run = copy_of(original, tmp_path / "a")
    (damaged_run / "checkpoints" / "ckpt-6.index").unlink()
    reference = copy_of(original, tmp_path / "b")
    for name in ("ckpt-6.index", "ckpt-6.data-00000-of-00001"):  # the same state, reached cleanly
        (reference / "checkpoints" / name).unlink()
    (reference / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n')
    a, printed = train(config, damaged_run, 7)
    b, _ = train(config, reference, 7)
    assert "checkpoint ckpt-6 (step 6) is damaged: its .index file is missing" in printed[0]
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_rotation_after_a_recovery_reaches_the_checkpoints_listed_before_it(trained, tmp_path):
    config, original = trained
    workdir = copy_of(original, tmp_path)
    (workdir / "checkpoints" / "ckpt-6.index").unlink()
    train(config, workdir, 12)  # resumes from ckpt-4, saves 6, 8, 10, 12 with 2 kept
    assert checkpoint_files(workdir) == ["ckpt-10.data-00000-of-00001", "ckpt-10.index",
                                         "ckpt-12.data-00000-of-00001", "ckpt-12.index"]


def test_with_no_intact_checkpoint_the_run_stops_with_one_message_and_deletes_nothing(trained, tmp_path):
    config, original = trained
    workdir = copy_of(original, tmp_path)
    folder = workdir / "checkpoints"
    (folder / "ckpt-6.index").unlink()
    truncate(folder / "ckpt-4.data-00000-of-00001")
    sizes = {n: (folder / n).stat().st_size for n in checkpoint_files(workdir)}
    model_bytes = (workdir / "model.keras").read_bytes()
    with pytest.raises(integrity.NoIntactCheckpointError) as caught:
        train(config, workdir, 8)
    message = str(caught.value)
    assert "has no intact checkpoint to resume from" in message and "ckpt-4 (step 4)" in message
    assert "ckpt-6 (step 6)" in message and "Nothing was trained and nothing was deleted" in message
    moved = {n: (folder / "damaged" / n).stat().st_size for n in os.listdir(folder / "damaged") if n.startswith("ckpt")}
    assert moved == sizes  # every file kept, byte for byte in size
    assert (workdir / "model.keras").read_bytes() == model_bytes  # training never ran
    assert checkpoint_files(workdir) == []


@pytest.mark.parametrize("how", ["truncated", "zero-length"])
def test_a_damaged_model_file_is_named_with_what_the_workdir_still_holds(trained, tmp_path, how):
    config, original = trained
    workdir = copy_of(original, tmp_path)
    truncate(workdir / "model.keras", None if how == "truncated" else 0)
    damaged_bytes = (workdir / "model.keras").read_bytes()
    with pytest.raises(integrity.DamagedFileError) as caught:
        train_lib.load_trained_model(str(workdir), config)
    message = str(caught.value)
    assert f"{workdir / 'model.keras'} is damaged" in message and "newest ckpt-6" in message
    assert "--mode=train" in message and (workdir / "model.keras").read_bytes() == damaged_bytes  # left as it is
    # What the message says to do works: the same training command writes model.keras anew, no step repeated.
    _, printed = train(config, workdir, 6)
    assert any("already trained for 6 steps" in line for line in printed)
    assert train_lib.load_trained_model(str(workdir), config) is not None

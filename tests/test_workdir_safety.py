"""Issue 33: a failed first checkpoint never yields a silently different model, the lock comes before anything is read,
a folder of someone else's files is refused untouched, bad values are refused before anything is written, and what
killed writes leave behind is cleaned up."""

import os
import shutil
import stat
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

from robustdet_tf import train as train_lib
from robustdet_tf.evaluation.table_spec import TableSpec
from robustdet_tf.io import WorkdirLockedError, atomic_output, workdir_lock
from robustdet_tf.workdir import BadTrainingSettingError, ForeignFolderError
from tests.helpers import lock_held_by_another_process
from tests.test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(config, workdir):
    printed = []
    model = train_lib.train_in_workdir(config, str(workdir), printer=printed.append)
    return [w.numpy() for w in model.weights], printed


def _snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    """A trained tiny SSD as ``init_from``, and the config of a run that starts from it (2 steps, one checkpoint)."""
    base = tmp_path_factory.mktemp("base")
    config = tiny_config()
    config.train.update(steps=2, checkpoint_every=2)
    _train(config, base)
    started = tiny_config()
    started.train.update(steps=2, checkpoint_every=2, init_from=str(base / "model.keras"))
    folder = tmp_path_factory.mktemp("reference")
    reference, printed = _train(started, folder)
    assert "weights from: the trained SSD " + str(base / "model.keras") + " (its weights copied)" in printed
    return started, reference, folder


def test_a_rerun_after_a_failed_first_checkpoint_starts_from_init_from_and_says_so(init_run, tmp_path):
    config, reference, folder = init_run
    # What a first attempt leaves when it dies writing its first checkpoint: its records, TensorFlow's temporary
    # folder and state file, and a data shard without its index.
    shutil.copytree(folder, tmp_path / "run",
                    ignore=shutil.ignore_patterns("checkpoints", "model.keras", "tensorboard", ".lock"))
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "ckpt-2_temp").mkdir(parents=True)
    (checkpoints / "ckpt-2_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    (checkpoints / "checkpoint.tmp0123abcd").write_text("x")
    (checkpoints / "ckpt-2.data-00000-of-00001").write_bytes(b"half a shard")
    keras.utils.set_random_seed(99)  # the rerun's start must not come from whatever the process drew before
    weights, printed = _train(config, tmp_path / "run")
    for got, want in zip(weights, reference, strict=True):
        np.testing.assert_array_equal(got, want)
    assert f"weights from: the trained SSD {config.train.init_from} (its weights copied)" in printed
    assert any("checkpoints/ckpt-2_temp" in line and "checkpoints/checkpoint.tmp0123abcd" in line for line in printed)
    assert any("no intact checkpoint is left" in line and "starts as configured" in line for line in printed)
    assert not (checkpoints / "ckpt-2_temp").exists()
    assert (checkpoints / "damaged" / "ckpt-2.data-00000-of-00001").read_bytes() == b"half a shard"  # kept


def test_a_second_train_on_a_busy_workdir_is_refused_before_it_reads_anything(init_run, tmp_path):
    config = init_run[0]
    workdir = tmp_path / "busy"
    _train(config, workdir)
    before = _snapshot(workdir)
    with lock_held_by_another_process(workdir) as pid:
        longer = tiny_config()
        longer.train.update(steps=4, checkpoint_every=2, init_from=config.train.init_from)
        printed = []
        with pytest.raises(WorkdirLockedError, match=f"in use by another run \\(pid {pid} "):
            train_lib.train_in_workdir(longer, str(workdir), printer=printed.append)
        assert printed == []  # no "resuming", no report: refused before it looked
    after = _snapshot(workdir)
    after.pop(".lock"), before.pop(".lock")  # the holder wrote its name into the lock file
    assert after == before


def test_the_lock_nests_in_its_thread_and_refuses_another_thread(tmp_path):
    refused = []

    def other():
        try:
            with workdir_lock(tmp_path):
                pass
        except WorkdirLockedError as err:
            refused.append(str(err))

    with workdir_lock(tmp_path):
        with workdir_lock(tmp_path):  # the run's inner steps take it again
            pass
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(refused) == 1 and "in use by another run" in refused[0]
    with workdir_lock(tmp_path):  # released by the outer exit
        pass


def test_a_folder_of_someone_elses_files_is_refused_and_left_byte_for_byte(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    (folder / "train_config.json").write_text('{"lr": 0.1, "mine": true}')
    (folder / "model.keras").write_bytes(b"someone's model")
    before = _snapshot(folder)
    with pytest.raises(ForeignFolderError) as caught:
        _train(tiny_config(), folder)
    message = str(caught.value)
    assert "data.csv, model.keras, notes.txt, train_config.json" in message and "Nothing was changed" in message
    assert f"--workdir={folder / 'run'}" in message
    assert _snapshot(folder) == before and sorted(os.listdir(folder)) == sorted(before)  # not even a lock file


def test_an_empty_folder_or_one_holding_an_empty_checkpoints_folder_is_a_fresh_workdir(tmp_path):
    config = tiny_config()
    config.train.update(steps=1, checkpoint_every=1)
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    _train(config, tmp_path / "fresh")
    assert (tmp_path / "fresh" / "model.keras").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("steps", -5, "config.train.steps=-5 cannot be used: give a number of optimiser steps >= 1"),
    ("batch_size", 0, "config.train.batch_size=0 cannot be used: give a batch size >= 1"),
    ("learning_rate", -1.0, "config.train.learning_rate=-1.0 cannot be used: give a learning rate > 0"),
])
def test_bad_training_values_are_refused_before_anything_is_written(tmp_path, key, value, expected):
    config = tiny_config()
    config.train.update(steps=2, checkpoint_every=2)
    _train(config, tmp_path / "run")
    before = _snapshot(tmp_path / "run")
    config.train[key] = value
    with pytest.raises(BadTrainingSettingError, match=expected):
        _train(config, tmp_path / "run")
    with pytest.raises(BadTrainingSettingError):
        _train(config, tmp_path / "new")
    assert _snapshot(tmp_path / "run") == before and not (tmp_path / "new").exists()


def test_negative_steps_on_the_command_line_exit_non_zero_and_write_no_model(tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "--mode=train", f"--workdir={tmp_path / 'run'}",
                           "--config.train.steps=-5"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode != 0 and "config.train.steps=-5 cannot be used" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_negative_attack_budget_is_refused_when_the_table_is_specified():
    with pytest.raises(ValueError, match=r"pgd.epsilon=-2.0 is negative.*Nothing was written"):
        TableSpec.from_config({"attacks": ("clean", "A_cls"), "overrides": {"pgd": {"epsilon": -2.0}}})
    with pytest.raises(ValueError, match="pgd.step_size=-1"):
        TableSpec.from_config({"attacks": ("clean", "Transfer"), "overrides": {"pgd": {"step_size": -1}}})
    TableSpec.from_config({"attacks": ("clean",), "overrides": {"pgd": {"epsilon": 2.0}}})  # a valid one passes


def test_what_killed_writes_left_is_removed_on_the_next_run_and_exported_folders_are_readable(tmp_path):
    config = tiny_config()
    config.train.update(steps=1, checkpoint_every=1)
    _train(config, tmp_path / "run")
    (tmp_path / "run" / ".model.keras.ab12cd_3.tmp").mkdir()
    (tmp_path / "run" / ".train_config.json.zz99yy00.tmp").mkdir()
    (tmp_path / "run" / ".notes.txt").write_text("a user's hidden file stays")
    config.train.steps = 2
    _, printed = _train(config, tmp_path / "run")
    assert sorted(n for n in os.listdir(tmp_path / "run") if n.startswith(".")) == [".lock", ".notes.txt"]
    assert any(".model.keras.ab12cd_3.tmp" in line for line in printed)
    with atomic_output(tmp_path / "export", directory=True) as target:
        open(os.path.join(target, "f"), "w").close()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "export").st_mode) == 0o777 & ~mask


def test_a_run_stopped_by_a_signal_raises_instead_of_returning_a_half_trained_model(tmp_path, monkeypatch):
    from tests.test_train import InterruptAt

    config = tiny_config()
    config.train.update(steps=4, checkpoint_every=4)
    run = train_lib.Trainer.run
    monkeypatch.setattr(train_lib.Trainer, "run", lambda self, **kw: run(self, callbacks=[InterruptAt(2)], **kw))
    with pytest.raises(train_lib.TrainingInterrupted, match="stopped at step 2 of 4.*Run the same command again"):
        _train(config, tmp_path)
    assert not (tmp_path / "model.keras").exists() and (tmp_path / "checkpoints" / "ckpt-2.index").exists()
    monkeypatch.setattr(train_lib.Trainer, "run", run)
    _, printed = _train(config, tmp_path)
    assert any("resuming" in line and "at step 2" in line for line in printed) and (tmp_path / "model.keras").exists()

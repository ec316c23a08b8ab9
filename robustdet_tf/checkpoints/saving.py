"""Writing training checkpoints: the periodic / on-signal save callback and a save that fails cleanly.

Why its own module: what happens when a checkpoint cannot be written (a full disk) is a contract of its own — the
previous checkpoint stays intact and resumable, the half-written files go, and the user gets one clear line — and
it is independent of how the trainer builds models and data (``train.py``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf


class NonFiniteWeightsError(RuntimeError):
    """The weights to checkpoint hold NaN or inf; nothing was written."""

    def __init__(self, message: str, step: int, names: str):
        super().__init__(message)
        self.step, self.names = step, names


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (typically a full disk); the previous one is intact."""


def save_checkpoint(manager: tf.train.CheckpointManager, step: int,
                    before_save: Callable[[], None] | None = None, weights: Sequence[Any] = ()) -> str:
    """``manager.save`` that, when the write fails (disk full, quota, I/O error), removes the half-written files of
    this step and raises one clear ``CheckpointWriteError``; the previous checkpoint and the index are untouched
    (the manager updates its index only after a complete write).  ``before_save`` gathers state the checkpoint
    cannot read by itself (every replica's held adversarial batch, ``models/held_batches.py``).  ``weights`` (the
    model's) are checked first: weights holding NaN or inf are never written (``NonFiniteWeightsError``), so the newest
    checkpoint is always one a run can continue from."""
    if before_save is not None:
        before_save()
    bad = [v.path for v in weights if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(v.value, tf.float32))))]
    if bad:
        names = f"{', '.join(bad[:3])}{' and others' if len(bad) > 3 else ''}"
        raise NonFiniteWeightsError(
            f"not writing the checkpoint of step {step}: the model's weights {names} hold NaN or inf. The previous "
            f"checkpoint ({manager.latest_checkpoint or 'none yet'}) is kept as it is; resume from it with a lower "
            "learning rate.", step, names)
    directory = manager.directory
    before = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as err:
        for name in (set(os.listdir(directory)) if os.path.isdir(directory) else set()) - before - {"checkpoint"}:
            path = os.path.join(directory, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        free = shutil.disk_usage(directory).free / 2**20 if os.path.isdir(directory) else float("nan")
        reason = str(getattr(err, "message", None) or err).strip().splitlines()[-1]
        previous = manager.latest_checkpoint or "none yet"
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} to {directory} ({reason}; {free:.0f} MiB free there). "
            f"The previous checkpoint ({previous}) is intact and the partial files were removed: free some space "
            "(or use a --workdir on a larger disk) and run the same command again to resume."
        ) from None


class CheckpointEvery(keras.callbacks.Callback):
    """Save every ``every`` steps and stop (then save) when a SIGINT/SIGTERM arrives."""

    def __init__(self, manager: tf.train.CheckpointManager, step_var: tf.Variable, start: int, every: int,
                 before_save: Callable[[], None] | None = None):
        super().__init__()
        self.before_save = before_save
        self.manager, self.step_var, self.start, self.every = manager, step_var, start, max(1, every)
        self.interrupted = False
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        step = self.start + self.done
        self.step_var.assign(step)
        if step % self.every == 0 or self.interrupted:
            save_checkpoint(self.manager, step, self.before_save, self.model.weights)
        if self.interrupted:
            self.model.stop_training = True

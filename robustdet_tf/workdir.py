"""What a training workdir records and the guard that refuses one the config cannot continue.

A workdir holds ``model_config.json`` (the model, label map settled), ``train_config.json`` (``config.train`` of the
last start), the checkpoints and, at the end, ``model.keras``.  A resume compares the records with the new config
before anything is written: other architecture settings are refused (``check_workdir``), a changed optimiser, seed
or starting point is refused (``recorded_settings``), every other change is said (the trainer applies the learning
rate and momentum to the restored optimiser).
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf.behaviour import migrated_model_settings
from robustdet_tf.io import atomic_output, write_text
from robustdet_tf.models.factory import resolved_model_config

# Model-config keys that decide the weights' shapes: a workdir trained with other values cannot be resumed.
ARCHITECTURE_KEYS = (
    "kind", "num_classes", "image_size", "width", "extras", "aspect_ratios", "num_kernels", "cfr", "aid_width",
    "decoder_width", "class_names",
)
MODEL_RECORD = "model_config.json"
TRAIN_RECORD = "train_config.json"
"""``config.train`` of the run's last start, compared with the new settings on a resume."""
REFUSED_ON_RESUME = ("optimizer", "seed", "init_from")
"""``config.train`` keys a resume cannot change: the restored optimiser state, the data order and the starting
weights belong to the recorded values.  Every other change is printed; the learning rate and momentum are applied
to the restored optimiser."""


class IncompatibleWorkdirError(ValueError):
    """The workdir holds a model that the config cannot continue."""


class ForeignFolderError(IncompatibleWorkdirError):
    """The folder holds files this program did not write: it is someone's folder, not a workdir."""


class BadTrainingSettingError(ValueError):
    """A ``config.train`` value no run can use (caught before anything is written)."""


OWN_HIDDEN = (".lock",)
"""What a run leaves in a folder before it writes its records (the lock file)."""


def _is_our_record(path: str) -> bool:
    """Whether ``path`` is a ``model_config.json`` as this program writes it (a JSON object with the model's size
    and classes)."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"num_classes", "image_size"} <= set(record)


def foreign_entries(workdir: str) -> list[str]:
    """The entries of ``workdir`` that show it is not a workdir of ours: none for a missing or empty folder (the
    lock file and empty sub-folders do not count) or one holding our ``model_config.json``; else every entry."""
    if not os.path.isdir(workdir):
        return []
    entries = sorted(name for name in os.listdir(workdir) if name not in OWN_HIDDEN and not (
        os.path.isdir(os.path.join(workdir, name)) and not os.listdir(os.path.join(workdir, name))))
    if not entries or _is_our_record(os.path.join(workdir, MODEL_RECORD)):
        return []
    return entries


def check_not_foreign(workdir: str) -> None:
    """Refuse a folder of someone else's files as a workdir (reads only; nothing of it is touched)."""
    entries = foreign_entries(workdir)
    if entries:
        shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
        raise ForeignFolderError(
            f"--workdir={workdir} holds files this program did not write ({shown}); a run writes {MODEL_RECORD}, "
            f"{TRAIN_RECORD}, checkpoints/, tensorboard/ and model.keras into its workdir and could replace files "
            f"of those names. Name a new or empty folder (e.g. --workdir={os.path.join(workdir, 'run')}), or one a "
            "run of this program wrote. Nothing was changed.")


def check_training_settings(config) -> None:
    """Refuse ``config.train`` values no run can use, naming the key and a valid value, before anything is
    written: at least one step, batch size ≥ 1, a positive learning rate, a checkpoint interval ≥ 1."""
    train = config.train
    checks = (
        ("steps", int(train.get("steps", 1)) >= 1, "a number of optimiser steps >= 1, e.g. 1500"),
        ("batch_size", int(train.get("batch_size", 1)) >= 1, "a batch size >= 1, e.g. 16"),
        ("learning_rate", float(train.get("learning_rate", 1.0)) > 0, "a learning rate > 0, e.g. 1e-3"),
        ("checkpoint_every", int(train.get("checkpoint_every", 1)) >= 1, "a step interval >= 1, e.g. 500"),
    )
    bad = [(key, expected) for key, ok, expected in checks if not ok]
    if bad:
        raise BadTrainingSettingError("; ".join(
            f"config.train.{key}={train.get(key)!r} cannot be used: give {expected} (--config.train.{key}=...)"
            for key, expected in bad) + ". Nothing was written.")



def save_model_atomically(model: keras.Model, path: str) -> str:
    """Write ``path`` (a ``.keras`` archive) via a temporary file and a rename, so a crash never leaves half a file."""
    with atomic_output(path, overwrite=True) as tmp:  # tmp keeps the base name, so Keras sees the .keras suffix
        model.save(tmp)
    return path


def write_json_atomically(obj: Any, path: str) -> None:
    """The run record as indented JSON, written atomically."""
    write_text(path, json.dumps(obj, indent=1, default=str))


def train_record(config) -> dict:
    """``config.train`` as JSON data (tuples as lists), as ``train_config.json`` records it."""
    return json.loads(json.dumps(config.train.to_dict(), default=list))


def model_config_dict(config) -> dict:
    """``config.model`` as JSON data, label map settled (class names read, ``num_classes`` derived)."""
    return json.loads(json.dumps(resolved_model_config(config.model), default=list))


def check_workdir(workdir: str, config) -> None:
    """Refuse a workdir whose recorded model has other architecture settings; touch nothing."""
    path = os.path.join(workdir, MODEL_RECORD)
    if not os.path.exists(path):
        checkpoints = os.path.join(workdir, "checkpoints")
        if os.path.isdir(checkpoints) and os.listdir(checkpoints):  # an empty one holds nothing to mismatch
            raise IncompatibleWorkdirError(
                f"{workdir} holds checkpoints but no {MODEL_RECORD}; it was not written by this trainer. "
                "Use another --workdir."
            )
        return
    with open(path) as f:
        recorded = migrated_model_settings(json.load(f))  # a record of an earlier version in today's spelling
    wanted = model_config_dict(config)
    # A key the record lacks (a workdir of an earlier version) is not compared.
    diff = {k: (recorded[k], wanted.get(k)) for k in ARCHITECTURE_KEYS
            if k in recorded and recorded[k] != wanted.get(k)}
    if diff:
        details = ", ".join(f"{k}: workdir {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise IncompatibleWorkdirError(
            f"the workdir {workdir} holds a different model ({details}). Nothing was changed; use another "
            "--workdir, or the config it was trained with."
        )


def recorded_settings(workdir: str, checkpoint_dir: str, config) -> dict | None:
    """``config.train`` as the run recorded it, when there is a checkpoint to resume (``None`` otherwise, or for a
    workdir of an earlier version); a change of ``REFUSED_ON_RESUME`` is refused here, key named."""
    path = os.path.join(workdir, TRAIN_RECORD)
    if not os.path.exists(path) or tf.train.latest_checkpoint(checkpoint_dir) is None:
        return None
    with open(path, encoding="utf-8") as handle:
        recorded = json.load(handle)
    current = train_record(config)
    refused = [k for k in REFUSED_ON_RESUME if recorded.get(k) != current.get(k)]
    if refused:
        raise IncompatibleWorkdirError(
            f"{workdir} was trained with " + ", ".join(f"train.{k}={recorded.get(k)!r}" for k in refused)
            + "; a resume cannot change " + ", ".join(f"train.{k}" for k in refused) + " (the restored optimiser "
            "state, data order or starting weights belong to the recorded value). Resume with the recorded "
            "value, or start a new run in another --workdir. Nothing was changed.")
    return recorded

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
        if os.path.isdir(os.path.join(workdir, "checkpoints")):
            raise IncompatibleWorkdirError(
                f"{workdir} holds checkpoints but no {MODEL_RECORD}; it was not written by this trainer. "
                "Use another --workdir."
            )
        return
    with open(path) as f:
        recorded = json.load(f)
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

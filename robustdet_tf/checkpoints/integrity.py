"""Which checkpoints of a workdir are whole, and what happens to the others: moved aside, named, never deleted.

Why: a crash, a full disk or a copy that stopped half way leaves a checkpoint without its ``.index``, with a
truncated ``.data`` shard, or with zero-length files.  ``tf.train.latest_checkpoint`` then either finds nothing (a
missing index: the run silently starts over from step 0, and the ``CheckpointManager``'s rotation deletes the
intact older checkpoint) or restores garbage that fails deep inside TensorFlow.  So before a resume every checkpoint
of the folder is checked by reading it whole; the damaged ones go to ``<checkpoints>/damaged/`` (their files moved,
not deleted), the ``checkpoint`` state file is rewritten to list the intact ones only (so rotation can never reach
the last of them), and the run resumes from the newest intact one, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from dataclasses import dataclass

import tensorflow as tf

from robustdet_tf.io import move_aside, write_text

DAMAGED_DIR = "damaged"
_CHECKPOINT_FILE = re.compile(r"^(?P<prefix>.+-(?P<step>\d+))\.(?:index|data-\d{5}-of-(?P<shards>\d{5}))$")


class NoIntactCheckpointError(RuntimeError):
    """The workdir has checkpoints but none of them can be read whole."""


@dataclass(frozen=True)
class Damaged:
    """A checkpoint that cannot be restored: its prefix, step, why, and where its files went."""

    prefix: str
    step: int
    reason: str
    moved_to: str


def _checkpoint_prefixes(directory: str) -> dict[str, int]:
    """Every checkpoint prefix with files in ``directory`` (index or data), mapped to its step."""
    found: dict[str, int] = {}
    for name in os.listdir(directory):
        match = _CHECKPOINT_FILE.match(name)
        if match:
            found[os.path.join(directory, match.group("prefix"))] = int(match.group("step"))
    return found


def damage(prefix: str) -> str | None:
    """Why the checkpoint ``prefix`` cannot be restored (``None``: it reads whole).

    Checks that the index exists and is not empty, that every data shard it names exists, and reads every tensor
    (a truncated shard fails there, as it would half way through a restore).
    """
    directory, base = os.path.split(prefix)
    index = f"{prefix}.index"
    if not os.path.exists(index):
        return "its .index file is missing"
    if os.path.getsize(index) == 0:
        return "its .index file is empty"
    shards = [n for n in os.listdir(directory) if n.startswith(f"{base}.data-")]
    if not shards:
        return "its .data file is missing"
    expected = int(shards[0].rsplit("-of-", 1)[1])
    missing = [f"{base}.data-{i:05d}-of-{expected:05d}" for i in range(expected)
               if f"{base}.data-{i:05d}-of-{expected:05d}" not in shards]
    if missing:
        return f"its data shard(s) {', '.join(missing)} are missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError, OSError) as err:
        detail = str(getattr(err, "message", None) or err).strip().splitlines()
        return f"it cannot be read ({detail[-1] if detail else type(err).__name__}; truncated or corrupted)"
    return None


def _move_aside(prefix: str) -> str:
    """Move every file of ``prefix`` into ``<directory>/damaged/``; returns that folder."""
    directory, base = os.path.split(prefix)
    target = os.path.join(directory, DAMAGED_DIR)
    for name in sorted(os.listdir(directory)):
        if name.startswith(f"{base}.") and os.path.isfile(os.path.join(directory, name)):
            move_aside(os.path.join(directory, name), target)
    return target


_TEMPORARY = re.compile(r"^(?:.+-\d+_temp|checkpoint\.tmp[0-9a-f]+)$")
"""What TensorFlow's checkpoint writer keeps while it writes (``ckpt-N_temp/``, ``checkpoint.tmp<hex>``) and leaves
behind when the writer is killed."""


def has_intact_checkpoint(directory: str) -> bool:
    """Whether ``directory`` holds a checkpoint that reads whole (reads only: nothing is moved)."""
    if not os.path.isdir(directory):
        return False
    return any(damage(prefix) is None for prefix in _checkpoint_prefixes(directory))


def remove_temporaries(directory: str) -> list[str]:
    """Remove the temporary entries a killed checkpoint write left in ``directory``; returns their names.  Only
    under the workdir's lock: a live writer's entries look the same."""
    if not os.path.isdir(directory):
        return []
    found = sorted(name for name in os.listdir(directory) if _TEMPORARY.match(name))
    for name in found:
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return found


def sort_out(directory: str) -> tuple[list[tuple[str, int]], list[Damaged]]:
    """Check every checkpoint of ``directory``: move the damaged ones aside and list the intact ones in the
    ``checkpoint`` state file.  Returns ``(intact, damaged)``, intact as ``(prefix, step)`` oldest first."""
    if not os.path.isdir(directory):
        return [], []
    intact, damaged = [], []
    for prefix, step in sorted(_checkpoint_prefixes(directory).items(), key=lambda item: item[1]):
        reason = damage(prefix)
        if reason is None:
            intact.append((prefix, step))
        else:
            damaged.append(Damaged(prefix, step, reason, _move_aside(prefix)))
    if damaged and intact:
        write_state(directory, [p for p, _ in intact])
    elif damaged:
        state = os.path.join(directory, "checkpoint")
        if os.path.exists(state):
            move_aside(state, os.path.join(directory, DAMAGED_DIR))
    return intact, damaged


def write_state(directory: str, prefixes: list[str]) -> None:
    """The ``checkpoint`` state file listing ``prefixes`` (oldest first, the last is the latest) with their
    timestamps, so ``tf.train.CheckpointManager`` rotates them like its own: a state without timestamps (what
    ``update_checkpoint_state`` writes by default) marks every listed checkpoint as preserved for ever."""
    stamps = [os.path.getmtime(f"{prefix}.index") for prefix in prefixes]
    lines = [f'model_checkpoint_path: "{os.path.basename(prefixes[-1])}"']
    lines += [f'all_model_checkpoint_paths: "{os.path.basename(prefix)}"' for prefix in prefixes]
    lines += [f"all_model_checkpoint_timestamps: {stamp!r}" for stamp in stamps]
    lines.append(f"last_preserved_timestamp: {min(stamps) - 1.0!r}")
    write_text(os.path.join(directory, "checkpoint"), "\n".join(lines) + "\n")


def describe(damaged: list[Damaged]) -> str:
    """One line per damaged checkpoint: which, why, where its files are now."""
    return "; ".join(f"checkpoint {os.path.basename(d.prefix)} (step {d.step}) is damaged: {d.reason}; its files were "
                     f"moved to {d.moved_to}" for d in damaged)


class DamagedFileError(ValueError):
    """A saved model file exists but is not a complete archive (truncated, zero-length, corrupted)."""


def _archive_damage(path: str) -> str | None:
    """Why ``path`` is not a whole zip archive (a ``.keras`` file is one), or ``None``."""
    if os.path.getsize(path) == 0:
        return "it is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return "it is not a complete .keras (zip) archive: truncated or corrupted"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"its archive cannot be read ({err})"
    return None if bad is None else f"its member {bad} is corrupted"


def load_model_file(path: str | os.PathLike):
    """``keras.saving.load_model(path)``, with a damaged file named as damaged, together with what the workdir still
    holds to rebuild it from (its checkpoints) and what to run.  The file is left as it is."""
    import keras

    path = os.fspath(path)
    if os.path.isfile(path):
        reason = _archive_damage(path)
        if reason is not None:
            workdir = os.path.dirname(os.path.abspath(path))
            latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
            if latest and os.path.basename(path) == "model.keras":
                fix = (f"its workdir still holds checkpoints (newest {os.path.basename(latest)}): run --mode=train "
                       f"with --workdir={workdir} and the same config to write model.keras anew from them (no "
                       "training step is repeated)")
            else:
                fix = "there are no checkpoints beside it to rebuild it from: restore it from a copy or train again"
            raise DamagedFileError(f"{path} is damaged: {reason}. It was left as it is; {fix}.")
    return keras.saving.load_model(path)

"""Sharded, resumable evaluation of one table cell: shards of consecutive batches, their metric states on disk.

Why shards of *consecutive* batches: ``VOCMetric.merge`` / ``COCOMetric.merge`` append a state after the images seen
so far, so merging the states of consecutive parts in their order gives bit for bit the metric of one pass.  Shard
``s`` is batches ``[s·k, (s+1)·k)`` of the evaluation set (``k = shard_batches``; ``None``: the whole set is shard 0).

Why one walk over the batches instead of ``batches.skip(s·k).take(k)`` per shard: a tf.data pipeline that decodes
files is not random-access, so ``skip`` reads the skipped batches anyway and per-shard skips would read the set
O(shards²) times.  Each worker walks the set once per cell, runs the attack and the detector only on the batches of
its own unfinished shards and merely reads the others (reading is cheap next to a PGD attack).

Files, each written atomically (``io.atomic_output``), under ``<output_dir>/shards/``:

* ``<model>/<attack>/shard-00003.npz`` — the cell's metric ``state()`` over shard 3 (``np.savez``, no pickle) plus
  ``shard_num_batches``.  The last shard is the first one with fewer than ``k`` batches (possibly none: the number of
  batches of a pipeline may be unknown, so the end is recorded as an empty shard rather than guessed);
* ``plan.json`` is written and checked by ``evaluation.shard_plan``.

Workers (``TF_CONFIG``; see ``Workers``) divide the shards statically, worker ``w`` taking ``s % W == w``: no
scheduler and no collectives, so workers may start at different times, and a rerun (with any number of workers)
only computes the shards that are missing.
"""

from __future__ import annotations

import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustdet_tf import distribution
from robustdet_tf.evaluation.report import file_stem
from robustdet_tf.io import atomic_output, move_aside

SHARDS_DIR = "shards"
COUNT_KEY = "shard_num_batches"
_SHARD_FILE = re.compile(r"^shard-(\d{5})\.npz$")


@dataclass(frozen=True)
class Workers:
    """This process's place in the evaluation: worker ``index`` of ``count``; the chief writes the table."""

    index: int = 0
    count: int = 1
    chief: bool = True

    @classmethod
    def from_environment(cls) -> Workers:
        """The workers of ``TF_CONFIG`` (chief first); one chief worker outside a cluster."""
        return cls(distribution.worker_index(), distribution.num_workers(), distribution.is_chief())

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index


def shards_root(output_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(output_dir), SHARDS_DIR)


def cell_dir(output_dir: str | os.PathLike, model_name: str, attack_name: str) -> str:
    """The folder of one (model, attack) cell's shard states."""
    return os.path.join(shards_root(output_dir), file_stem(model_name), file_stem(attack_name))


def is_unfinished(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir`` holds partial results of a table that was not written yet (a run to resume)."""
    output_dir = os.fspath(output_dir)
    return os.path.isdir(shards_root(output_dir)) and not os.path.exists(os.path.join(output_dir, "robustness.json"))


def shard_file(directory: str, shard: int) -> str:
    return os.path.join(directory, f"shard-{shard:05d}.npz")


DAMAGED_DIR = "damaged_shards"
"""Where damaged shard files go (``<output_dir>/damaged_shards/<model>/<attack>/``): kept, never read again."""

_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _set_aside(directory: str, name: str, err: BaseException, on_damaged: Callable[[str], None]) -> None:
    """Move a shard file that cannot be read out of the cell's folder (so it is computed again) and say so."""
    model_dir = os.path.dirname(os.path.normpath(directory))  # <output_dir>/shards/<model>/<attack>
    output_dir = os.path.dirname(os.path.dirname(model_dir))
    target = os.path.join(output_dir, DAMAGED_DIR, os.path.basename(model_dir), os.path.basename(directory))
    destination = move_aside(os.path.join(directory, name), target)
    on_damaged(f"shard {os.path.join(directory, name)} is damaged ({type(err).__name__}: {err}); it was moved to "
               f"{destination} and is computed again")


def finished_shards(directory: str, known: dict[int, int] | None = None,
                    on_damaged: Callable[[str], None] = _warn) -> dict[int, int]:
    """``{shard: number of batches}`` of the shard files in ``directory`` (only the count is read; counts already in
    ``known`` are not read again: a shard file never changes once it is in place).  A file that cannot be read
    (truncated by a crash or a full disk) is moved to ``damaged_shards/`` and reported through ``on_damaged``: it is
    then missing, so the run computes it again."""
    if not os.path.isdir(directory):
        return {}
    found = {}
    for name in sorted(os.listdir(directory)):
        match = _SHARD_FILE.match(name)
        if match:
            shard = int(match.group(1))
            if known is not None and shard in known:
                found[shard] = known[shard]
                continue
            try:
                with np.load(os.path.join(directory, name), allow_pickle=False) as data:
                    for key in data.files:  # every array: a truncated member fails here, not in the merge
                        data[key]
                    found[shard] = int(data[COUNT_KEY])
            except _READ_ERRORS as err:
                _set_aside(directory, name, err, on_damaged)
    return found


def last_shard(done: Mapping[int, int], shard_batches: int | None) -> int | None:
    """The index of the last shard (the first with fewer than ``shard_batches`` batches), if one is known."""
    short = [s for s, n in done.items() if shard_batches is None or n < shard_batches]
    return min(short) if short else None


def save_shard(directory: str, shard: int, state: Mapping[str, np.ndarray], num_batches: int) -> None:
    """Write one shard's metric state atomically (a temporary file renamed into place)."""
    os.makedirs(directory, exist_ok=True)
    with atomic_output(shard_file(directory, shard), overwrite=True) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **state, **{COUNT_KEY: np.array(num_batches, np.int64)})


def load_shard(directory: str, shard: int) -> dict[str, np.ndarray]:
    """A shard's metric state (without the batch count), as ``merge`` takes it."""
    with np.load(shard_file(directory, shard), allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != COUNT_KEY}


StepFn = Callable[[Any, Any], tuple[Mapping[str, Any], Any]]
OnBatch = Callable[[int, Any, Any, Mapping[str, Any]], None]


def compute_shards(
    directory: str,
    batches: Iterable,
    step: StepFn,
    metric_factory: Callable[[], Any],
    shard_batches: int | None,
    workers: Workers = Workers(),
    on_batch: OnBatch | None = None,
    prepare: Callable[[int, Any], Any] | None = None,
) -> tuple[int, int]:
    """Compute and save this worker's unfinished shards of one cell; returns ``(computed, reused)`` shard counts.

    ``step(images, targets) -> (detections, attacked images)`` is the cell's batched attack + detection;
    ``on_batch(batch index, images, attacked, detections)`` sees every batch this call computes;
    ``prepare(batch index, images) -> images`` (the ``Corrupt`` cells' corruption) runs on those batches only,
    before the step.  Finished shards
    (files present) are neither recomputed nor rewritten; when the end of the set is known from the files and all
    of this worker's shards up to it are done, the data is not even read.
    """
    done = finished_shards(directory)
    end = last_shard(done, shard_batches)
    if end is not None and all(s in done for s in range(end + 1) if workers.owns(s)):
        return 0, sum(1 for s in range(end + 1) if workers.owns(s))
    computed: set[int] = set()
    current: dict[str, Any] = {"shard": None, "metric": None, "count": 0}

    def flush() -> None:
        if current["metric"] is not None:
            save_shard(directory, current["shard"], current["metric"].state(), current["count"])
            computed.add(current["shard"])
        current.update(metric=None, count=0)

    num_batches = 0
    for index, (images, targets) in enumerate(batches):
        num_batches = index + 1
        shard = 0 if shard_batches is None else index // shard_batches
        if shard != current["shard"]:
            flush()
            current["shard"] = shard
        if not workers.owns(shard) or shard in done:
            continue
        if current["metric"] is None:
            current["metric"] = metric_factory()
        if prepare is not None:
            images = prepare(index, images)
        detections, adv = step(images, targets)
        current["metric"].update(detections, targets)
        current["count"] += 1
        if on_batch is not None:
            on_batch(index, images, adv, detections)
    flush()
    end = 0 if shard_batches is None else num_batches // shard_batches
    if workers.owns(end) and end not in done and end not in computed:  # the end marker: an empty last shard
        save_shard(directory, end, metric_factory().state(), 0)
        computed.add(end)
    reused = sum(1 for s in done if s <= end and workers.owns(s))
    return len(computed), reused


def merged_metric(
    directory: str,
    metric_factory: Callable[[], Any],
    shard_batches: int | None,
    workers: Workers = Workers(),
    timeout: float = 3600.0,
    poll: float = 2.0,
    what: str = "the cell",
) -> Any:
    """A fresh metric holding every shard of the cell merged in shard order (the one-pass metric, bit for bit).

    Waits up to ``timeout`` seconds for shards other workers compute; then refuses, naming the missing shards and
    the workers that own them.
    """
    deadline = time.monotonic() + float(timeout)
    done: dict[int, int] = {}
    wait = 0.02
    while True:
        done = finished_shards(directory, done)
        end = last_shard(done, shard_batches)
        missing = None if end is None else [s for s in range(end + 1) if s not in done]
        if missing == []:
            break
        if time.monotonic() >= deadline:
            raise TimeoutError(_missing_message(what, directory, done, missing, workers, timeout))
        time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        wait = min(2 * wait, poll)  # quick while the other workers are about to finish, then every `poll` seconds
    metric = metric_factory()
    for shard in range(end + 1):
        metric.merge(load_shard(directory, shard))
    return metric


def _missing_message(what, directory, done, missing, workers, timeout) -> str:
    if missing is None:
        have = sorted(done)
        detail = (f"the last shard is not there yet (shards present: {have or 'none'}; the next ones are computed "
                  f"by worker(s) {sorted({s % workers.count for s in range(len(have), len(have) + workers.count)})})")
    else:
        owners = {s: s % workers.count for s in missing}
        detail = "shards missing: " + ", ".join(f"{s} (worker {w})" for s, w in owners.items())
    return (f"{what}: after waiting {timeout:g} s for the other workers' shards in {directory}, {detail}. Start or "
            "restart those workers with the same --output_dir (finished shards are kept and reused), or raise "
            "config.eval.shard_timeout; rerunning the chief later resumes the table.")

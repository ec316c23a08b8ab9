"""The common envelope of an exported metric state: its kind, its settings and its arrays, checked on the way in.

Why a module of its own: a sharded evaluation (``evaluation.sharded``) saves each shard's metric state and merges
the states later, possibly in another process.  A state merged into a metric of other settings (another class list,
the 11-point vs the all-point AP, other category ids) would give a number that looks right and is not, so both
metrics put their settings in the state and refuse a state whose settings differ, with one message naming both.
States are plain ``dict[str, np.ndarray]`` (settings as a JSON string in a 0-d array), so ``np.savez`` stores them
without pickling.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


class MetricStateError(ValueError):
    """A metric state that does not belong to this metric (other kind or settings) or is internally inconsistent."""


def envelope(kind: str, settings: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The ``metric`` and ``settings`` entries every state starts with."""
    return {"metric": np.array(kind), "settings": np.array(json.dumps(dict(settings), sort_keys=True))}


def concatenated(parts: Sequence[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """``np.concatenate(parts)``, or ``empty`` (which fixes dtype and trailing shape) when there are none."""
    return np.concatenate(list(parts)) if parts else empty


def checked(state: Mapping[str, Any], kind: str, settings: Mapping[str, Any], keys: Sequence[str],
            migrate: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """``state`` as NumPy arrays after checking its kind, its settings and that it has every key in ``keys``;
    ``migrate`` brings the settings of a state written by an older version into today's spelling first."""
    def require(names: Sequence[str]) -> None:
        missing = [k for k in names if k not in state]
        if missing:
            raise MetricStateError(f"the metric state lacks {missing}; it was not written by a {kind} metric's "
                                   "state().")

    require(("metric", "settings"))
    arrays = {k: np.asarray(v) for k, v in state.items()}
    if str(arrays["metric"]) != kind:
        raise MetricStateError(f"a {arrays['metric']} metric state cannot be merged into a {kind} metric.")
    require(keys)
    theirs = json.loads(str(arrays["settings"]))
    if migrate is not None:
        theirs = migrate(theirs)
    ours = json.loads(json.dumps(dict(settings), sort_keys=True))
    if theirs != ours:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise MetricStateError(f"the {kind} metric state was made with other settings ({', '.join(differ)}: "
                               f"{ {k: theirs.get(k) for k in differ} } vs this metric's "
                               f"{ {k: ours.get(k) for k in differ} }); merge states of identically built metrics.")
    return arrays


def split_by_counts(values: np.ndarray, counts: np.ndarray, what: str) -> list[np.ndarray]:
    """``values`` cut into consecutive per-image pieces of ``counts`` rows (refused if the counts do not add up)."""
    counts = np.asarray(counts, np.int64)
    if np.any(counts < 0) or int(counts.sum()) != len(values):
        raise MetricStateError(f"the metric state is inconsistent: {what} has {len(values)} rows but its per-image "
                               f"counts add up to {int(counts.sum())}.")
    return np.split(values, np.cumsum(counts)[:-1]) if counts.size else []

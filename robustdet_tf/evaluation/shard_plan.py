"""``<output_dir>/shards/plan.json``: what the partial results of a sharded evaluation belong to.

Why: shard states are merged later, possibly by another process or after an interruption.  Merging the shards of
another model, protocol, data or shard size would give a table that looks right and is not, so every run writes its
plan (if absent) or compares it with the one on disk and refuses a difference, naming the keys that differ.  Nothing
is deleted: the fix is another output folder (or removing the folder by hand to start over).  The number of workers
is not part of the plan: shards are the unit, so a table started by two workers can be finished by one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from robustdet_tf.behaviour import migrated_protocol
from robustdet_tf.evaluation.sharded import shards_root
from robustdet_tf.io import write_text
from robustdet_tf.metrics.voc import migrated_settings

PLAN_FILE = "plan.json"
PLAN_FORMAT = 1


class PlanMismatchError(ValueError):
    """The output folder holds partial results of another evaluation."""


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 of the model's weights (names, shapes and values): a retrained model is another model."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.asarray(keras.ops.convert_to_numpy(weight.value))
        digest.update(f"{weight.path}:{value.dtype}:{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def make_plan(
    models: Mapping[str, keras.Model],
    attacks: Sequence[str],
    protocol: Mapping[str, Any],
    shard_batches: int | None,
    metric: Any,
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """The plan of a table: models (by weights), columns, protocol, shard size, metric settings and data."""
    state = metric.state()
    return json.loads(json.dumps({
        "format": PLAN_FORMAT,
        "models": {name: weights_fingerprint(model) for name, model in models.items()},
        "attacks": list(attacks),
        "protocol": dict(protocol),
        "shard_batches": shard_batches,
        "metric": {"kind": str(state["metric"]), "settings": json.loads(str(state["settings"]))},
        "data": dict(data),
    }, sort_keys=True, default=str))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def _migrated(saved: dict[str, Any]) -> dict[str, Any]:
    """A plan written by an older version in today's spelling (``robustdet_tf.behaviour``), so its run resumes."""
    if isinstance(saved.get("protocol"), Mapping):
        saved["protocol"] = migrated_protocol(saved["protocol"])
    settings = saved.get("metric", {}).get("settings") if isinstance(saved.get("metric"), Mapping) else None
    if isinstance(settings, dict) and saved["metric"].get("kind") == "voc":
        saved["metric"]["settings"] = migrated_settings(settings)
    return saved


def check_plan(output_dir: str | os.PathLike, plan: Mapping[str, Any]) -> bool:
    """Write ``plan`` into ``output_dir/shards`` if there is none; otherwise refuse a different one.

    Returns whether a plan was already there (the run resumes).  Several workers may write the same plan at once:
    each write is atomic and the contents are equal.
    """
    path = os.path.join(shards_root(output_dir), PLAN_FILE)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text(path, json.dumps(plan, indent=2, sort_keys=True) + "\n")
        return False
    with open(path, encoding="utf-8") as handle:
        saved = _migrated(json.load(handle))
    protocol = saved.get("protocol")
    for key, column in (("corruptions", "Corrupt"), ("patch", "Patch")):  # a plan from before these columns
        if isinstance(protocol, dict) and key not in protocol and column not in saved.get("attacks", []):
            protocol[key] = plan["protocol"].get(key)
    ours, theirs = _flat(plan), _flat(saved)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k, "<absent>") != theirs.get(k, "<absent>"))
    if differ:
        shown = "; ".join(f"{k}: saved {theirs.get(k, '<absent>')!r}, now {ours.get(k, '<absent>')!r}"
                          for k in differ[:8])
        more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
        raise PlanMismatchError(
            f"{os.path.dirname(path)} holds partial results of another evaluation ({shown}{more}). Nothing was "
            "deleted. Evaluate into another output folder (--output_dir), or remove that folder to start over.")
    return True

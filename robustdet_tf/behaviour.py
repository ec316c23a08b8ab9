"""One vocabulary for the switches that keep or correct what the official code does
(docs/reference.md#switches-at-a-glance).

Why one vocabulary: a user reading a config should not have to learn that "faithful", "reference_offsets",
"euclidean" and "reference" all mean *as the official code does it*.  Every such switch takes one of three words:

* ``"reference"`` — what the official code does, bugs and quirks included (the default wherever numbers are
  compared with the paper's);
* ``"corrected"`` — the official code's bug fixed;
* ``"paper"`` — what the paper writes, where the code departs from it.

The old spellings are refused with a message naming the new one; files written by older versions (``.keras``
models, recorded model settings, results and shard plans) are read through ``migrated_*`` so they keep working.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

REFERENCE = "reference"
CORRECTED = "corrected"
PAPER = "paper"
REFERENCE_OR_CORRECTED = (REFERENCE, CORRECTED)
REFERENCE_OR_PAPER = (REFERENCE, PAPER)

RENAMED_KEYS: dict[str, tuple[str, dict[Any, str]]] = {
    "data.faithful_augment": ("data.augment_chain", {True: REFERENCE, False: CORRECTED}),
    "eval.reference_offsets": ("eval.voc_offsets", {True: REFERENCE, False: CORRECTED}),
    "dag.faithful": ("dag.variant", {True: REFERENCE, False: CORRECTED}),
    "reference_offsets": ("voc_offsets", {True: REFERENCE, False: CORRECTED}),  # a protocol's own key
}
"""Old key → (new key, old value → new value)."""

RENAMED_VALUES: dict[str, dict[Any, str]] = {
    "triplet_hinge": {"euclidean": REFERENCE, "js": PAPER},
}
"""Switches whose key stayed and whose values were renamed: old value → new value."""


def checked(name: str, value: Any, allowed: tuple[str, ...] = REFERENCE_OR_CORRECTED) -> str:
    """``value`` if it is one of ``allowed``; otherwise a ``ValueError`` naming ``name``, the accepted values and, for
    an old spelling, the word that replaced it."""
    if isinstance(value, str) and value in allowed:
        return value
    short = name.rsplit(".", 1)[-1]
    hint = ""
    if short in RENAMED_VALUES and _hashable(value) and value in RENAMED_VALUES[short]:
        hint = f" ({value!r} was renamed {RENAMED_VALUES[short][value]!r})"
    elif isinstance(value, bool):
        hint = f" ({value} was the old yes/no spelling: True is {REFERENCE!r}, False is {CORRECTED!r})"
    raise ValueError(f"{name}={value!r} is not a behaviour: use one of {allowed}{hint}.")


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def renamed_key_message(key: str) -> str | None:
    """The message for a config key that was renamed (``None`` for any other key); ``key`` may be a full dotted path
    such as ``config.data.faithful_augment``."""
    for old, (new, values) in RENAMED_KEYS.items():
        if key == old or key.endswith("." + old):
            mapping = ", ".join(f"{o} → {n!r}" for o, n in values.items())
            return f"{old} was renamed {new}: set {new} to {REFERENCE!r} or {CORRECTED!r} (old values: {mapping})."
    return None


def refuse_renamed_keys(settings: Mapping[str, Any], where: str) -> None:
    """Raise ``KeyError`` with the rename message if ``settings`` (the mapping found at ``where``, e.g. ``"data"``)
    holds a key that was renamed."""
    for key in settings:
        message = renamed_key_message(f"{where}.{key}" if where else str(key))
        if message:
            raise KeyError(message)


def migrated_protocol(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """A protocol dict as written by any version, in today's spelling (``dag.faithful`` → ``dag.variant``,
    ``reference_offsets`` → ``voc_offsets``)."""
    out = copy.deepcopy(dict(protocol))
    if "reference_offsets" in out:
        out["voc_offsets"] = RENAMED_KEYS["eval.reference_offsets"][1][bool(out.pop("reference_offsets"))]
    dag = out.get("dag")
    if isinstance(dag, Mapping) and "faithful" in dag:
        dag = dict(dag)
        dag["variant"] = RENAMED_KEYS["dag.faithful"][1][bool(dag.pop("faithful"))]
        out["dag"] = dag
    return out


def migrated_model_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Model settings (a ``.keras`` config, a recorded ``model`` block) as written by any version, in today's
    spelling (``triplet_hinge="euclidean"`` → ``"reference"``, ``"js"`` → ``"paper"``)."""
    out = dict(settings)
    for key, values in RENAMED_VALUES.items():
        if _hashable(out.get(key)) and out.get(key) in values:
            out[key] = values[out[key]]
    return out

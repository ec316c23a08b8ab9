"""``TableSpec``: everything that defines one robustness table besides its models and data, as one value; and
``TableRun``: how this process computes it.

Why one value: a table's columns, protocol, metric settings, intervals, shards and transfer source are read in
several places (the plan a resume must match, the cells, the intervals, the report).  As one frozen spec, built once
from ``config.eval`` (``from_config``) the way ``AttackSpec`` is, each setting has one name and one default (here),
and the spec is recorded in ``robustness.json`` beside the results.  ``TableRun`` holds what does not change the
table, only how it is computed: the replicas, the workers, where progress lines go, the metric factory and the data's
identity a resume must match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from robustdet_tf.behaviour import refuse_renamed_keys
from robustdet_tf.evaluation.protocol import (
    ATTACKS,
    PAPER_ATTACKS,
    PGD_METHODS,
    attack_spec,
    dag_spec,
    make_protocol,
)
from robustdet_tf.metrics.bootstrap import BootstrapSpec

CONFIG_KEYS = ("attacks", "protocol", "overrides", "sample_images", "sample_score_threshold", "sample_top_n",
               "shard_batches", "shard_timeout", "bootstrap", "transfer_source", "gradient_check_images")
"""The ``config.eval`` keys a table spec reads (the others, such as ``batch_size`` or ``metric``, shape the data and
the protocol's metric settings)."""


def _plain(value: Any) -> Any:
    """A ``ConfigDict`` as the plain dict it holds; any other value unchanged."""
    return value.to_dict() if hasattr(value, "to_dict") else value


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One robustness table (docs/reference.md#evaluation-protocol).

    Attributes:
      attacks: the columns, from ``protocol.ATTACKS``.
      protocol: a predefined protocol's name or a full protocol dict (``evaluation.protocol``).
      overrides: deep-merged into the protocol (``make_protocol``), e.g. ``{"pgd": {"steps": 5}}``.
      max_batches: evaluate only the first batches (quick looks); ``None``: all.
      plots: write the PR curves and the bar plot.
      sample_images: draw clean vs attacked detections of that many first-batch images per cell (0: none).
      sample_score_threshold, sample_top_n: which detections the pictures show.
      shard_batches: batches per shard (``None``: the whole set is one shard).
      shard_timeout: seconds the chief waits for shards other workers compute.
      bootstrap: resamples, seed and level of the paired intervals (``resamples = 0``: none).
      transfer_source: the model whose A_cls images the ``Transfer`` column uses (``None``: the first model).
      gradient_check_images: run the gradient check (``evaluation/gradient_check.py``: zero and NaN/inf input
        gradients, the A_cls loss along its steps) per model on that many first images, into ``robustness.json``'s
        ``gradient_check`` (0: none).
    """

    attacks: tuple[str, ...] = PAPER_ATTACKS
    protocol: str | Mapping[str, Any] = "reference"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_batches: int | None = None
    plots: bool = True
    sample_images: int = 0
    sample_score_threshold: float = 0.3
    sample_top_n: int = 10
    shard_batches: int | None = None
    shard_timeout: float = 3600.0
    bootstrap: BootstrapSpec = BootstrapSpec()
    transfer_source: str | None = None
    gradient_check_images: int = 0

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        set_("attacks", tuple(self.attacks))
        set_("overrides", dict(_plain(self.overrides)))
        if not isinstance(self.bootstrap, BootstrapSpec):
            set_("bootstrap", BootstrapSpec.from_mapping(self.bootstrap))
        set_("transfer_source", self.transfer_source or None)
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(f"evaluate_robustness: unknown attack(s) {unknown} (or none given); choose from "
                             f"{ATTACKS}.")
        self._check_columns()
        if int(self.gradient_check_images) < 0:
            raise ValueError(f"eval.gradient_check_images must be >= 0 (0: no gradient check), got "
                             f"{self.gradient_check_images}.")
        set_("gradient_check_images", int(self.gradient_check_images))
        if self.shard_batches is not None and int(self.shard_batches) < 1:
            raise ValueError(f"evaluate_robustness: shard_batches must be >= 1 (or None: one shard), got "
                             f"{self.shard_batches}.")

    def _check_columns(self) -> None:
        """Build every column's attack settings once, so a value no attack can use (a negative ε, say) is refused
        before the table writes anything, not after its first cell."""
        try:
            protocol = self.resolved_protocol()
            for name in self.attacks:
                column = "A_cls" if name == "Transfer" else name  # Transfer replays the source model's A_cls
                if column in PGD_METHODS:
                    attack_spec(column, protocol)
                elif column == "DAG":
                    dag_spec(protocol)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"config.eval cannot run the table {list(self.attacks)}: {err} Nothing was "
                             "written.") from None

    @classmethod
    def from_config(cls, settings: Mapping[str, Any], **changes) -> TableSpec:
        """From ``config.eval``: the keys of ``CONFIG_KEYS`` it has (a missing key keeps the default written here),
        its ``metric`` and ``voc_offsets`` merged into the protocol overrides (a renamed key is refused); ``changes``
        replace fields."""
        refuse_renamed_keys(settings, "eval")
        values = {key: _plain(settings[key]) for key in CONFIG_KEYS if key in settings}
        metric = {key: settings[key] for key in ("metric", "voc_offsets") if key in settings}
        values["overrides"] = {**(values.get("overrides") or {}), **metric}
        if "attacks" in values and not values["attacks"]:
            del values["attacks"]
        if "shard_batches" in values:
            values["shard_batches"] = int(values["shard_batches"]) or None  # 0: the whole set is one shard
        return cls(**{**values, **changes})

    def resolved_protocol(self) -> dict[str, Any]:
        """The full protocol dict (``make_protocol`` of ``protocol`` with ``overrides``)."""
        return make_protocol(self.protocol, self.overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``robustness.json``."""
        out = dataclasses.asdict(self)
        out["attacks"] = list(self.attacks)
        out["bootstrap"] = self.bootstrap.to_dict()
        return out


@dataclasses.dataclass(frozen=True)
class TableRun:
    """How this process computes a table (nothing here changes a number but the Patch column's training batches).

    Attributes:
      strategy: split each batch over its replicas (``evaluation.replicas``); ``None``: one device.
      workers: this process's place among the workers (``None``: from ``TF_CONFIG``).
      printer: receives the progress lines and the shard summary; ``None``: silent.
      metric_factory: builds a fresh metric per cell (``None``: the protocol's metric over the class names).
      data: what identifies the evaluation data (name, batch size, ...), recorded in the plan a resume must match.
      patch_batches: the training batches ``(images, targets)`` the ``Patch`` column fits each model's patch on
        (the only field that enters a number: the patch is a function of them).
    """

    strategy: tf.distribute.Strategy | None = None
    workers: Any = None
    printer: Callable[[str], None] | None = None
    metric_factory: Callable[[], Any] | None = None
    data: Mapping[str, Any] | None = None
    patch_batches: tf.data.Dataset | None = None


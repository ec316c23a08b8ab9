"""Adversarial-training schedules shared by RobustDet and the SSD-AT / MTD / CWAT baselines
(docs/reference.md#adversarial-training, docs/reference.md#baselines).

The reference *interleaves* the attack with the optimiser: it loads a batch to attack, then for 20 optimiser steps
advances that batch by one PGD (or MTD) step against the current model and trains on the result, so training sees
1-, 2-, …, 20-step iterates against a moving model.  We keep the held batch (the images being attacked, their
clean source, their targets) and a step counter in variables owned by the model, so ``model.fit`` reproduces the
schedule and a checkpoint of the model holds it.  The "plain" schedule instead runs a full PGD-k on a fresh batch at
every step.  The schedule owns its renewal period (the data stream asks it how often to bring a new batch to attack,
``renewal_period``) and its checkpoint state (``checkpoint_state``: the global held batch, ``held_batches.py``).

Under ``tf.distribute`` the variables are ``ON_READ``-synchronised: each replica keeps and advances its own batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from robustdet_tf.attacks.pgd import attack_step, pgd
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.models.held_batches import HeldBatches

SCHEDULES = ("interleaved", "plain")
TRAINING_METHODS = ("cls", "loc", "con", "cwa", "mtd")
REFERENCE_TRAINING_ATTACK = AttackSpec("mtd")
"""RobustDet's training attack: MTD steps of ε = α = 8, renewed every 20 steps
(docs/reference.md#adversarial-training)."""


class AdversarialBatch(NamedTuple):
    """The attacked half of a step: the adversarial images, their clean sources and their targets."""

    images: tf.Tensor
    clean: tf.Tensor
    targets: dict[str, tf.Tensor]


def _state_variable(shape: Sequence[int | None], dtype, name: str) -> tf.Variable:
    initial = tf.zeros([0 if d is None else d for d in shape], dtype)
    return tf.Variable(
        initial,
        shape=tf.TensorShape(shape),
        dtype=dtype,
        trainable=False,
        name=name,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class AdversarialSchedule(tf.Module):
    """Produces the adversarial half of each training step.

    Args:
      attack: the attack of each step (``AttackSpec``; method ``cls`` / ``loc`` / ``con`` / ``cwa`` / ``mtd``).
        ``attack.steps`` is the renewal period of the interleaved schedule (20), ``attack.random_start`` applies to
        the plain schedule only (the reference has none).
      schedule: ``interleaved`` (reference) or ``plain`` (full PGD-``steps`` every optimiser step).
    """

    def __init__(self, attack: AttackSpec = REFERENCE_TRAINING_ATTACK, schedule: str = "interleaved"):
        super().__init__(name="adversarial_schedule")
        if attack.method not in TRAINING_METHODS:
            raise ValueError(f"unknown adversarial training method {attack.method!r}; choose one of "
                             f"{TRAINING_METHODS}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown adversarial schedule {schedule!r}; choose one of {SCHEDULES}")
        self.attack = attack
        self.schedule = schedule
        self.seed_generator = keras.random.SeedGenerator(attack.seed)
        self.clean = _state_variable([None, None, None, 3], tf.float32, "adv_clean")
        self.current = _state_variable([None, None, None, 3], tf.float32, "adv_current")
        self.boxes = _state_variable([None, None, 4], tf.float32, "adv_boxes")
        self.labels = _state_variable([None, None], tf.int32, "adv_labels")
        self.counter = _state_variable([], tf.int64, "adv_counter")

    @classmethod
    def from_config(cls, settings: Mapping[str, Any], seed: int | None = None) -> AdversarialSchedule:
        """From a model config's ``adversarial`` dict: ``AttackSpec`` keys plus ``schedule``; ``seed`` is the
        default of the attack's seed."""
        settings = dict(settings)
        schedule = settings.pop("schedule", "interleaved")
        settings.setdefault("seed", seed)
        return cls(AttackSpec.from_dict(settings, where="config.model.adversarial"), schedule)

    @property
    def renewal_period(self) -> int:
        """Optimiser steps between two fresh batches to attack: the attack's ``steps`` (interleaved), 1 (plain).
        The data stream repeats each batch of its attacked stream this many times (``pipeline.two_streams``)."""
        return self.attack.steps if self.schedule == "interleaved" else 1

    @property
    def held(self) -> dict[str, tf.Variable]:
        """The held batch: ``clean`` sources, ``current`` adversarial images, target ``boxes`` and ``labels``."""
        return {"clean": self.clean, "current": self.current, "boxes": self.boxes, "labels": self.labels}

    def next_renewal(self, counter: int) -> int:
        """The counter value at which the next fresh batch is taken, seen from ``counter``."""
        return (counter // self.renewal_period + 1) * self.renewal_period

    def checkpoint_state(self, strategy: tf.distribute.Strategy) -> HeldBatches | None:
        """What a checkpoint must hold besides the model's variables: the global held batch of an interleaved
        schedule (``held_batches.HeldBatches``), ``None`` for the plain schedule, which holds nothing."""
        return HeldBatches(self, strategy) if self.schedule == "interleaved" else None

    def next_batch(
        self, model: keras.Model, to_attack: tf.Tensor, to_attack_targets: Mapping[str, tf.Tensor]
    ) -> AdversarialBatch:
        """The attacked half for this optimiser step, from the step's ``to_attack`` stream (float32 images, targets
        as ``TrainingData`` holds them).

        Interleaved: every ``renewal_period`` calls the fresh batch replaces the held one; each call advances the
        held batch by one attack step (training-mode off) and stores it.  Plain: a full attack on the fresh batch.
        """
        if self.schedule == "plain":
            adv = pgd(model, to_attack, to_attack_targets, self.attack, self.seed_generator)
            return AdversarialBatch(tf.stop_gradient(adv), to_attack, dict(to_attack_targets))

        renew = tf.equal(self.counter % self.renewal_period, 0)
        pick = lambda fresh, held: tf.cond(renew, lambda: fresh, lambda: tf.identity(held))  # noqa: E731
        clean = pick(to_attack, self.clean)
        current = pick(to_attack, self.current)
        targets = {"boxes": pick(to_attack_targets["boxes"], self.boxes),
                   "labels": pick(to_attack_targets["labels"], self.labels)}
        adv = tf.stop_gradient(attack_step(model, current, clean, targets, self.attack))
        updates = [
            self.clean.assign(clean),
            self.current.assign(adv),
            self.boxes.assign(targets["boxes"]),
            self.labels.assign(targets["labels"]),
            self.counter.assign_add(1),
        ]
        with tf.control_dependencies(updates):
            return AdversarialBatch(tf.identity(adv), tf.identity(clean), targets)


def concat_targets(*targets: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Stack padded target dicts (as ``TrainingData`` holds them) along the batch, padding the object axis to the
    longest."""
    n = tf.reduce_max(tf.stack([tf.shape(t["labels"])[1] for t in targets]))
    boxes, labels = [], []
    for t in targets:
        pad = n - tf.shape(t["labels"])[1]
        boxes.append(tf.pad(t["boxes"], [[0, 0], [0, pad], [0, 0]]))
        labels.append(tf.pad(t["labels"], [[0, 0], [0, pad]], constant_values=-1))
    return {"boxes": tf.concat(boxes, 0), "labels": tf.concat(labels, 0)}

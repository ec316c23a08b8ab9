"""Adversarial-training schedules shared by RobustDet and the SSD-AT / MTD / CWAT baselines (spec §6.3, §6.5).

The reference *interleaves* the attack with the optimiser: it loads a batch to attack, then for 20 optimiser steps
advances that batch by one PGD (or MTD) step against the current model and trains on the result, so training sees
1-, 2-, …, 20-step iterates against a moving model.  We keep the batch being attacked, its clean source, its targets
and a step counter in variables owned by the model, so ``model.fit`` reproduces the schedule and a checkpoint of
the model holds it.  The "plain" schedule instead runs a full PGD-k on a fresh batch at every step.

Under ``tf.distribute`` the variables are ``ON_READ``-synchronised: each replica keeps and advances its own batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from robustdet_tf.attacks.pgd import attack_step, pgd

SCHEDULES = ("interleaved", "plain")
METHODS = ("cls", "loc", "con", "cwa", "mtd")


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
      method: attack objective of each step: ``cls`` / ``loc`` / ``con`` / ``cwa`` (PGD) or ``mtd``.
      epsilon, step_size: budget and step in pixels (reference: 8 and 8).
      steps: PGD steps per adversarial batch — the renewal period of the interleaved schedule (20).
      schedule: ``interleaved`` (reference) or ``plain`` (full PGD-``steps`` every optimiser step).
      random_start: start from uniform noise in the ε-ball (the plain schedule only; the reference has none).
    """

    def __init__(
        self,
        method: str = "mtd",
        epsilon: float = 8.0,
        step_size: float = 8.0,
        steps: int = 20,
        schedule: str = "interleaved",
        random_start: bool = False,
        con_weights: Sequence[float] = (1.0, 1.0),
        mtd_per_image: bool = False,
        seed: int | None = None,
    ):
        super().__init__(name="adversarial_schedule")
        if method not in METHODS:
            raise ValueError(f"unknown adversarial training method {method!r}; choose one of {METHODS}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown adversarial schedule {schedule!r}; choose one of {SCHEDULES}")
        self.method = method
        self.epsilon = float(epsilon)
        self.step_size = float(step_size)
        self.steps = int(steps)
        self.schedule = schedule
        self.random_start = bool(random_start)
        self.con_weights = tuple(float(w) for w in con_weights)
        self.mtd_per_image = bool(mtd_per_image)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.clean = _state_variable([None, None, None, 3], tf.float32, "adv_clean")
        self.current = _state_variable([None, None, None, 3], tf.float32, "adv_current")
        self.boxes = _state_variable([None, None, 4], tf.float32, "adv_boxes")
        self.labels = _state_variable([None, None], tf.int32, "adv_labels")
        self.counter = _state_variable([], tf.int64, "adv_counter")

    def _step(self, model, images, clean, targets):
        return attack_step(
            model, images, clean, targets, self.method, self.epsilon, self.step_size, self.con_weights,
            self.mtd_per_image,
        )

    def next_batch(
        self, model: keras.Model, fresh_images: tf.Tensor, fresh_targets: Mapping[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
        """``(adversarial images, their clean sources, their targets)`` for this optimiser step.

        Interleaved: every ``steps`` calls the fresh batch replaces the held one; each call advances the held batch
        by one attack step (training-mode off) and stores it.  Plain: a full attack on the fresh batch.
        """
        fresh_targets = {"boxes": tf.cast(fresh_targets["boxes"], tf.float32),
                         "labels": tf.cast(fresh_targets["labels"], tf.int32)}
        fresh_images = tf.cast(fresh_images, tf.float32)
        if self.schedule == "plain":
            adv = pgd(model, fresh_images, fresh_targets, self.method, self.epsilon, self.step_size, self.steps,
                      self.random_start, self.seed_generator, self.con_weights, self.mtd_per_image)
            return tf.stop_gradient(adv), fresh_images, fresh_targets

        renew = tf.equal(self.counter % self.steps, 0)
        pick = lambda fresh, held: tf.cond(renew, lambda: fresh, lambda: tf.identity(held))  # noqa: E731
        clean = pick(fresh_images, self.clean)
        current = pick(fresh_images, self.current)
        targets = {"boxes": pick(fresh_targets["boxes"], self.boxes),
                   "labels": pick(fresh_targets["labels"], self.labels)}
        adv = tf.stop_gradient(self._step(model, current, clean, targets))
        updates = [
            self.clean.assign(clean),
            self.current.assign(adv),
            self.boxes.assign(targets["boxes"]),
            self.labels.assign(targets["labels"]),
            self.counter.assign_add(1),
        ]
        with tf.control_dependencies(updates):
            return tf.identity(adv), tf.identity(clean), targets


def concat_targets(*targets: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Stack padded target dicts along the batch, padding the object axis to the longest."""
    n = tf.reduce_max(tf.stack([tf.shape(t["labels"])[1] for t in targets]))
    boxes, labels = [], []
    for t in targets:
        pad = n - tf.shape(t["labels"])[1]
        boxes.append(tf.pad(tf.cast(t["boxes"], tf.float32), [[0, 0], [0, pad], [0, 0]]))
        labels.append(tf.pad(tf.cast(t["labels"], tf.int32), [[0, 0], [0, pad]], constant_values=-1))
    return {"boxes": tf.concat(boxes, 0), "labels": tf.concat(labels, 0)}

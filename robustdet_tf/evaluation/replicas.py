"""One evaluation batch split over the replicas of a ``tf.distribute`` strategy, detections back in image order.

Why this is enough: the detectors are per-image independent in inference mode (batch norm on moving statistics,
AID included; each PGD step moves every pixel by the sign of its own gradient), so each replica can attack and
detect a contiguous slice of the batch on its own.  The slices' results are concatenated in replica order
(``experimental_local_results``), which is the one-device image order, before the metric sees them.  No collective
is needed: nothing is reduced across replicas.  The table is the one-device table bit for bit where TensorFlow's
kernels give each image the same bits at the replicas' batch size (the SSD here, tested); RobustDet's AID stem
convolution does not here, so its mixtures may differ in the last bit and a sign-gradient attack may then move a
few pixels the other way (splitting the set over *workers* keeps whole batches and stays exact for every model).
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.evaluation.evaluate import AttackFn, attack_targets, detection_step

ATTACK_KEYS = ("boxes", "labels", "difficult")
"""The target entries an attack reads (``attack_targets``); strings such as ``image_id`` stay on the host."""


def slice_bounds(batch: int, replicas: int) -> list[int]:
    """Contiguous near-equal slices (the first ones one image larger), as ``np.array_split`` cuts."""
    sizes = [len(part) for part in np.array_split(np.arange(batch), replicas)]
    return [0, *np.cumsum(sizes).tolist()]


def batch_step(model: keras.Model, attack: AttackFn | None, strategy: tf.distribute.Strategy | None = None):
    """``(images, targets) → (detections, attacked images)`` for one batch, over the strategy's replicas if it has
    more than one (a batch smaller than the number of replicas runs unsplit)."""
    single = detection_step(model, attack)
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return single
    replicas = strategy.num_replicas_in_sync

    def replica_step(images, targets):
        adv = images if attack is None else attack(model, images, attack_targets(targets))
        return model.detect(adv), adv

    @tf.function(reduce_retracing=True)
    def run(images, targets):
        return strategy.run(replica_step, args=(images, targets))

    def gather(value):
        return tf.concat(strategy.experimental_local_results(value), axis=0)

    def step(images, targets: Mapping[str, tf.Tensor]):
        images = tf.convert_to_tensor(images, tf.float32)
        batch = int(images.shape[0])
        if batch < replicas:
            return single(images, targets)
        bounds = slice_bounds(batch, replicas)
        wanted = {k: tf.convert_to_tensor(v) for k, v in targets.items() if k in ATTACK_KEYS}

        def part(context):
            i = context.replica_id_in_sync_group
            return images[bounds[i]:bounds[i + 1]], {k: v[bounds[i]:bounds[i + 1]] for k, v in wanted.items()}

        detections, adv = run(*strategy.experimental_distribute_values_from_function(part))
        return tf.nest.map_structure(gather, detections), gather(adv)

    return step

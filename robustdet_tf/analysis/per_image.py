"""Per-image losses and per-image gradients: the raw material of every diagnostic in this room.

Why a module of its own: the paper's analyses (Figs. 3–5) are statements about single images — how one image's loss
moves, how the gradient of one clean image lines up with that of its adversarial twin — while the training loss
averages over a batch.  The functions here compute those per-image quantities in the graph, batched: per-image losses
by the MultiBox loss' per-image reduction of one forward pass, per-image gradients by a ``tf.map_fn`` over the
images inside a ``tf.function`` (each iteration one backward pass), reduced at once to the dot products the ratios
need so that no full per-image gradient ever leaves the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from robustdet_tf.attacks import objectives

PerImageLoss = Callable[[tf.Tensor, Mapping[str, tf.Tensor]], tf.Tensor]
"""``(images [B, H, W, 3], targets) → [B]``: one loss per image."""


def per_image_terms(model: keras.Model, images: tf.Tensor, targets: Mapping[str, tf.Tensor],
                    training: bool = False) -> tf.Tensor:
    """``[B, 2]``: each image's ``(loss_l, loss_c)``, normalised by that image's own positives, from one forward
    pass of the whole batch (test mode unless ``training``)."""
    outputs = model(images, training=training)
    targets = {"boxes": tf.cast(targets["boxes"], tf.float32), "labels": tf.cast(targets["labels"], tf.int32)}
    return tf.stack(objectives.per_image_terms(model, outputs, targets), axis=-1)


def detection_loss_fn(model: keras.Model) -> PerImageLoss:
    """The per-image ``loss_l + loss_c`` of ``model`` in test mode, as a ``PerImageLoss``."""
    return lambda images, targets: tf.reduce_sum(per_image_terms(model, images, targets), axis=-1)


def entanglement_ratio(dot: tf.Tensor, adv_sq_norm: tf.Tensor) -> tf.Tensor:
    """R = g_clean · g_adv / ‖g_adv‖² (NaN where g_adv = 0: the ratio is undefined there, not 0)."""
    dot = tf.convert_to_tensor(dot, tf.float32)
    adv_sq_norm = tf.convert_to_tensor(adv_sq_norm, tf.float32)
    return tf.where(adv_sq_norm > 0, dot / tf.where(adv_sq_norm > 0, adv_sq_norm, 1.0), float("nan"))


def gradient_ratio(g_clean: tf.Tensor, g_adv: tf.Tensor) -> tf.Tensor:
    """R of two batches of flattened gradients ``[N, D]`` → ``[N]`` (R = 1 for identical, 0 for orthogonal)."""
    g_clean = tf.convert_to_tensor(g_clean, tf.float32)
    g_adv = tf.convert_to_tensor(g_adv, tf.float32)
    return entanglement_ratio(tf.reduce_sum(g_clean * g_adv, -1), tf.reduce_sum(g_adv * g_adv, -1))


def _slice_sums(a: tf.Tensor, b: tf.Tensor, sliced: bool) -> tf.Tensor:
    """Σ a·b over everything (``[1]``) or, for a K-kernel AAconv weight ``[K, ...]``, per kernel (``[K]``)."""
    prod = tf.reshape(a * b, [tf.shape(a)[0], -1]) if sliced else tf.reshape(a * b, [1, -1])
    return tf.reduce_sum(prod, -1)


def pair_gradient_stats(loss_fn: PerImageLoss, variables: Sequence[tf.Variable], per_kernel: Sequence[bool],
                        clean: tf.Tensor, adversarial: tf.Tensor,
                        targets: Mapping[str, tf.Tensor]) -> list[tf.Tensor]:
    """For each image pair (clean_i, adversarial_i) and each variable v: ``[g_c·g_a, ‖g_a‖², ‖g_c‖²]`` where
    g = ∂loss(image)/∂v.

    Returns one tensor per variable of shape ``[B, 3, S]``: S = 1, or S = K (the leading axis of the weight, one
    AAconv kernel each) where ``per_kernel`` says so.  Each image's gradient is its own backward pass (a
    ``tf.map_fn`` over the images; call this inside ``tf.function``).
    """
    variables = list(variables)
    targets = {"boxes": tf.cast(targets["boxes"], tf.float32), "labels": tf.cast(targets["labels"], tf.int32)}

    def grads(image, target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(loss_fn(image[None], {k: v[None] for k, v in target.items()}))
        return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                for g, v in zip(tape.gradient(loss, variables), variables)]

    def one(item):
        clean_i, adv_i, target = item
        g_clean, g_adv = grads(clean_i, target), grads(adv_i, target)
        return [tf.stack([_slice_sums(gc, ga, s), _slice_sums(ga, ga, s), _slice_sums(gc, gc, s)])
                for gc, ga, s in zip(g_clean, g_adv, per_kernel)]

    sizes = [int(v.shape[0]) if s else 1 for v, s in zip(variables, per_kernel)]
    return tf.map_fn(one, (tf.cast(clean, tf.float32), tf.cast(adversarial, tf.float32), targets),
                     fn_output_signature=[tf.TensorSpec([3, n], tf.float32) for n in sizes])

"""Triplet loss on the AID's mixture vectors (docs/reference.md#aid-triplet-loss; paper Eq. 3).

The AID must map clean and adversarial images to different kernel mixtures.  The reference mines triplets with
a JS-type distance — for K = 4 it never exceeds ln2/2 < margin 0.6, so *every* negative qualifies and the
negative is uniformly random — but puts the **squared Euclidean** distance of the softmax vectors in the hinge,
averaged over triplets.  That is the default; the paper's JS-in-the-hinge is ``hinge_distance="js"``.
All anchor–positive pairs ``i < j`` of each label are used (C(16, 2) = 120 per label for a 16 + 16 batch).
"""

from __future__ import annotations

import keras
import tensorflow as tf

_EPS = 1e-12


def js_type_distance(p: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    """``(1/K) Σ_k [p ln p − p ln m + q ln q − q ln m]`` with ``m = (p + q)/2`` (= 2·JS/K), broadcasting."""
    m = (p + q) / 2
    k = tf.cast(tf.shape(p)[-1], p.dtype)
    terms = p * (tf.math.log(p + _EPS) - tf.math.log(m + _EPS)) + q * (tf.math.log(q + _EPS) - tf.math.log(m + _EPS))
    return tf.reduce_sum(terms, axis=-1) / k


def squared_euclidean(p: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.square(p - q), axis=-1)


def anchor_positive_pairs(labels: tf.Tensor) -> tf.Tensor:
    """``[N, N]`` bool: ``i < j`` and both have the same label."""
    same = tf.equal(labels[:, None], labels[None, :])
    n = tf.shape(labels)[0]
    return same & tf.linalg.band_part(tf.ones([n, n], tf.bool), 0, -1) & ~tf.eye(n, dtype=tf.bool)


def triplet_mask(labels: tf.Tensor, mining_values: tf.Tensor) -> tf.Tensor:
    """``[N, N, N]`` bool: (anchor i, positive j, negative n) is a candidate triplet.

    ``i < j`` share a label, ``n`` has another label and its mining value ``D(a,p) − D(a,n) + margin`` is > 0.
    """
    other = ~tf.equal(labels[:, None], labels[None, :])
    return anchor_positive_pairs(labels)[:, :, None] & other[:, None, :] & (mining_values > 0)


def aid_triplet_loss(
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    margin: float = 0.6,
    hinge_distance: str = "euclidean",
    seed: keras.random.SeedGenerator | int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns ``(loss, number_of_triplets)``.

    Each anchor–positive pair with at least one eligible negative contributes one triplet with a negative drawn
    uniformly among the eligible ones.  Fallbacks follow the reference: if no pair has an eligible negative the
    last pair with the first negative is used; without any pair the loss is the constant 0.1.
    """
    e = tf.convert_to_tensor(embeddings, tf.float32)
    labels = tf.convert_to_tensor(labels)
    d_mine = js_type_distance(e[:, None, :], e[None, :, :])  # [N, N]
    values = d_mine[:, :, None] - d_mine[:, None, :] + margin  # [a, p, n]
    candidates = triplet_mask(labels, values)
    if hinge_distance == "euclidean":
        d_hinge = squared_euclidean(e[:, None, :], e[None, :, :])
    elif hinge_distance == "js":
        d_hinge = js_type_distance(e[:, None, :], e[None, :, :])
    else:
        raise ValueError(f"hinge_distance must be 'euclidean' (reference code) or 'js' (paper), got {hinge_distance!r}")
    hinge = tf.nn.relu(d_hinge[:, :, None] - d_hinge[:, None, :] + margin)  # [a, p, n]

    # Uniform choice among eligible negatives: argmax of random keys over the eligible ones.
    keys = keras.random.uniform(tf.shape(candidates), seed=seed)
    keys = tf.where(candidates, keys, -1.0)
    chosen = tf.one_hot(tf.argmax(keys, axis=-1), tf.shape(e)[0], on_value=True, off_value=False) & candidates
    count = tf.reduce_sum(tf.cast(chosen, tf.float32))
    mined = tf.math.divide_no_nan(tf.reduce_sum(tf.where(chosen, hinge, 0.0)), count)

    pair_idx = tf.where(anchor_positive_pairs(labels))

    def fallback():
        last = pair_idx[-1]
        neg = tf.argmax(tf.cast(~tf.equal(labels, labels[last[0]]), tf.int32), output_type=tf.int64)
        has_neg = tf.reduce_any(~tf.equal(labels, labels[last[0]]))
        return tf.where(has_neg, hinge[last[0], last[1], neg], 0.1)

    loss = tf.cond(
        count > 0,
        lambda: mined,
        lambda: tf.cond(tf.shape(pair_idx)[0] > 0, fallback, lambda: tf.constant(0.1)),
    )
    return loss, count

"""The L∞ budget every PGD-family attack lives in: projection onto the ε-ball and the random start.

Why a module of its own: the reference PGD (``pgd.py``) and the best-iterate engine of restarts and APGD
(``strong.py``) must project identically, so both import these two functions instead of each writing its own.
Models eat pixels, so ε, the clip to ``[0, 255]`` and the noise are all in pixel units.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf.distribution import replica_seed


def project(candidate: tf.Tensor, clean: tf.Tensor, epsilon) -> tf.Tensor:
    """Clip the perturbation to the ε-ball around ``clean`` and the image to ``[0, 255]``."""
    eta = tf.clip_by_value(candidate - clean, -epsilon, epsilon)
    return tf.clip_by_value(clean + eta, 0.0, 255.0)


def random_start(images: tf.Tensor, epsilon: float, seed=None) -> tf.Tensor:
    """Uniform noise in the ε-ball, clipped to ``[0, 255]``."""
    shape, epsilon = tf.shape(images), tf.cast(epsilon, images.dtype)
    if seed is None:
        noise = keras.random.uniform(shape, -epsilon, epsilon, dtype=images.dtype)
    else:  # distinct noise on each replica of a tf.distribute step (Keras' own draw on one device)
        noise = tf.random.stateless_uniform(shape, replica_seed(seed), -epsilon, epsilon, dtype=images.dtype)
    return tf.clip_by_value(images + noise, 0.0, 255.0)


def in_graph(attack):
    """Run ``attack`` as a ``tf.function`` when it is called eagerly (inside a graph it runs as it is).

    Why: the eager CPU kernel of the filter gradient (oneDNN ``Conv2DBackpropFilter``, TF 2.21) crashes the process
    on RobustDet's per-image mixed kernels, whose gradient the pixels need because π depends on them; the graph
    kernels are fine.  An attack called from a notebook then works, at the price of one trace per call.
    """

    @functools.wraps(attack)
    def run(*args, **kwargs):
        if tf.executing_eagerly():
            return tf.function(lambda: attack(*args, **kwargs))()
        return attack(*args, **kwargs)

    return run


def repeat(times, body: Callable[[Any], Any], state: Any) -> Any:
    """``body`` applied ``times`` times to ``state`` (a tensor or a nested structure of tensors) as one graph
    ``while`` loop (eagerly: a loop of eager calls).

    Why written out: the attacks' step loops are the only control flow on tensors in an evaluation step, and a
    ``tf.range`` loop needs AutoGraph, which converts every function the step calls while tracing — about a quarter
    of the tracing time of a table cell.  With the loops explicit, evaluation traces with ``autograph=False``.
    """
    _, state = tf.while_loop(lambda i, _: i < times, lambda i, s: (i + 1, body(s)),
                             (tf.constant(0, tf.int32), state))
    return state

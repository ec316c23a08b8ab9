"""Attacks that adapt to RobustDet's defence: its discriminator (AID) picks the kernels (issue 14).

RobustDet routes every image through the kernel mixture π = AID(image).  A PGD attack that ignores this gets
whatever π its perturbation happens to cause — usually an "adversarial" π, which is what the defence was trained
to handle.  An attacker who knows the defence can do better; three such objectives, each per image (``[B]``):

* ``adaptive`` — ``base`` loss − λ·D(π_clean, π_adv): fool the detector while keeping the AID's mixture close to
  the one it gives the clean image, so the detector runs its clean-image kernels on the attacked image;
* ``fixed_pi`` — the ``base`` loss of the detector run with π held at the clean image's mixture (the gradient
  ignores the AID entirely); the result is then evaluated with the model's own π like every attack;
* ``aid`` — D(π_clean, π_adv) alone: push the AID's mixture as far as possible from the clean one, attacking the
  router instead of the detector.

D is ``kl`` = KL(π_clean ‖ π_adv) or ``js`` (the AID loss' JS-type distance).  π_clean is computed once from
the clean images and held constant.  The objective shapes the path; what counts as success is the ``base`` loss
of the model as it is evaluated, with its own π (``ascent_and_score``; for ``aid``, D itself): the attack engine
(``strong.py``) keeps, per image, the iterate that scores highest on it.  A model without an AID has π-free
objectives: ``adaptive`` and ``fixed_pi`` are then the plain ``base`` attack and ``aid`` does not apply
(``applies_to``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras
import tensorflow as tf

from robustdet_tf.attacks.model_protocol import has_aid
from robustdet_tf.attacks.objectives import per_image_loss_of_outputs
from robustdet_tf.attacks.spec import ADAPTIVE_METHODS, AttackSpec
from robustdet_tf.losses.aid_triplet import js_type_distance

PerImageObjective = Callable[[keras.Model, tf.Tensor, Mapping[str, tf.Tensor]], tf.Tensor]
AscentAndScore = Callable[[keras.Model, tf.Tensor, Mapping[str, tf.Tensor]], tuple[tf.Tensor, tf.Tensor]]
_EPS = 1e-12


def applies_to(method: str, model: keras.Model) -> bool:
    """``aid`` needs an AID to attack; every other method applies to every detector."""
    return method != "aid" or has_aid(model)


def mixture_divergence(pi_clean: tf.Tensor, pi_adv: tf.Tensor, kind: str = "kl") -> tf.Tensor:
    """``[B]``: KL(π_clean ‖ π_adv) or the JS-type distance of the AID loss, per image (0 for identical π)."""
    pi_clean = tf.cast(pi_clean, tf.float32)
    pi_adv = tf.cast(pi_adv, tf.float32)
    if kind == "kl":
        return tf.reduce_sum(pi_clean * (tf.math.log(pi_clean + _EPS) - tf.math.log(pi_adv + _EPS)), axis=-1)
    if kind == "js":
        return js_type_distance(pi_clean, pi_adv)
    raise ValueError(f"unknown mixture divergence {kind!r}; use 'kl' or 'js'")


def adaptive_objective(spec: AttackSpec, model: keras.Model, clean: tf.Tensor) -> PerImageObjective:
    """The per-image objective ``(model, images, targets) → [B]`` of an adaptive ``spec.method`` around ``clean``:
    the ascent half of ``ascent_and_score``."""
    both = ascent_and_score(spec, model, clean)
    return lambda m, x, t: both(m, x, t)[0]


def ascent_and_score(spec: AttackSpec, model: keras.Model, clean: tf.Tensor) -> AscentAndScore:
    """``(model, images, targets) → (ascent, score)``, both ``[B]``: the adaptive objective the steps climb and the
    ``base`` loss of the model with its own π that decides which iterate an image keeps (one forward pass where
    the two share it; ``fixed_pi`` needs a second, with the model's own π).  For ``aid`` both are D: its success
    is the move of the mixture."""
    if spec.method not in ADAPTIVE_METHODS:
        raise ValueError(f"{spec.method!r} is not an adaptive attack; choose one of {ADAPTIVE_METHODS}")
    if not applies_to(spec.method, model):
        raise ValueError(f"the '{spec.method}' attack needs a model with an AID (RobustDet); "
                         f"{type(model).__name__} has none")
    score = per_image_loss_of_outputs(spec.base, spec.con_weights)
    if not has_aid(model):  # no π to adapt to: the plain base objective
        return lambda m, x, t: (lambda v: (v, v))(score(m, m(x, training=False), t))
    pi_clean = tf.stop_gradient(model.mixture(clean))
    if spec.method == "fixed_pi":
        return lambda m, x, t: (score(m, m(x, pi=pi_clean, training=False), t), score(m, m(x, training=False), t))

    def both(m, x, t):
        outputs = m(x, training=False)
        d = mixture_divergence(pi_clean, outputs["pi"], spec.divergence)
        if spec.method == "aid":  # attacking the router: success is the move of π itself
            return d, d
        base = score(m, outputs, t)
        return base - spec.aid_weight * d, base

    return both

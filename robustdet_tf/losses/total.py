"""The paper's Eq. 5, the total training loss of RobustDet, as the reference applies it or as printed.

Why its own module: the loss terms live in ``losses/`` (MultiBox, the AID triplet loss, CFR's reconstruction and
KL terms); the one place that weighs them together belongs beside them, where a reader of the losses looks for it.
The RobustDet model (``models/robustdet.py``) computes the terms and calls ``total_loss``.
"""

from __future__ import annotations

import tensorflow as tf

from robustdet_tf.behaviour import PAPER, REFERENCE

LOSS_WEIGHTINGS = (REFERENCE, PAPER)
"""``reference``: the CFR terms divided by a further 255 as the official code does; ``paper``: the printed weights."""


def total_loss(
    loss_l: tf.Tensor,
    loss_c: tf.Tensor,
    loss_aid: tf.Tensor,
    loss_re: tf.Tensor | None = None,
    loss_kld: tf.Tensor | None = None,
    weighting: str = REFERENCE,
    beta: float = 0.75,
    aid_weight: float = 3.0,
    re_weight: float = 0.16,
    kld_weight: float = 5.0,
) -> tf.Tensor:
    """Eq. 5: ``β(L_loc + L_conf + a·L_aid) + b·L_re + c·L_kld``.

    ``weighting="reference"`` divides the CFR terms by a further 255 as the official code does
    (docs/reference.md#total-loss-eq-5); ``"paper"`` uses the weights as printed.  Without CFR the two are equal.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    loss = beta * (loss_l + loss_c + aid_weight * loss_aid)
    if loss_re is not None:
        cfr = re_weight * loss_re + kld_weight * loss_kld
        loss = loss + (cfr / 255.0 if weighting == REFERENCE else cfr)
    return loss

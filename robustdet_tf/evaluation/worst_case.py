"""The per-image worst case over a table's attacks: the ``Worst`` column (issue 14).

A defence is as strong as the best attack against it, and that attack may differ from image to image.  mAP does
not decompose over images, so "worst per image" needs a per-image criterion: each image keeps the attacked version
with the highest detection loss (``loss_l + loss_c`` of that image alone, on the attack targets, the model in test
mode with its own π) — the quantity every PGD column raises.  The column then scores those images like any other.

The loss is a proxy: an image's highest-loss version need not be the one that costs the most AP, so the column
can sit above the lowest single column (the demo's RobustDet: Worst 5.6 against A_cls 5.1); read it together
with the lowest cell.  It costs the sum of its attacks (they run again, batched, inside the one ``tf.function``
of each batch).  The cheaper summary — the lowest mAP of the columns, ``worst_case`` in ``robustness.json`` — is
``worst_column``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf.attacks.pgd import per_image_detection_loss
from robustdet_tf.evaluation.evaluate import AttackFn
from robustdet_tf.evaluation.protocol import UNATTACKED


def worst_case_attack(attacks: Sequence[AttackFn]) -> AttackFn:
    """An attack running every one of ``attacks`` and keeping, per image, the result with the largest loss."""
    if not attacks:
        raise ValueError("worst_case_attack needs at least one attack; the 'Worst' column needs other attack "
                         "columns in the table, e.g. attacks=['clean', 'A_cls', 'Adaptive', 'Worst'].")

    def attack(model: keras.Model, images: tf.Tensor, targets: Mapping[str, tf.Tensor]) -> tf.Tensor:
        best = None
        for fn in attacks:  # a few columns: unrolled in the graph
            adv = fn(model, images, targets)
            loss = per_image_detection_loss(model, adv, targets)
            if best is None:
                best, best_loss = adv, loss
            else:
                better = loss > best_loss
                best = tf.where(better[:, None, None, None], adv, best)
                best_loss = tf.where(better, loss, best_loss)
        return tf.stop_gradient(best)

    return attack


def worst_column(cells: Mapping[str, float | None]) -> dict[str, Any]:
    """``{"attack": name, "mAP": value}`` of the lowest attacked cell (``clean`` and ``Corrupt`` excluded: they attack
    nothing; ``None`` cells skipped)."""
    attacked = {k: v for k, v in cells.items() if k not in UNATTACKED and v is not None}
    if not attacked:
        return {"attack": None, "mAP": None}
    name = min(attacked, key=lambda k: attacked[k])
    return {"attack": name, "mAP": attacked[name]}

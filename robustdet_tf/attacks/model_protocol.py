"""What an attack needs of a model, written down once: ``AttackableDetector`` and, for the attacks on the
discriminator, ``RoutedDetector``.

Why: the attacks are functions of ``(model, images, targets, spec)`` and work on any detector that exposes a few
members — the head outputs of a call, the priors the ground truth is matched to, the number of classes, the match
threshold, the detection loss.  Probing them one ``hasattr`` at a time, where each attack happens to need them,
hid the contract and failed deep inside a trace.  Here it is a ``typing.Protocol``; ``check_attackable`` tests a
model against it once, where an attack starts, and names every missing member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import tensorflow as tf

MATCH_MEMBERS = ("priors", "num_classes", "match_threshold")
"""What ``MatchingDetector`` declares besides ``__call__`` (DAG's needs)."""
ATTACK_MEMBERS = (*MATCH_MEMBERS, "detection_loss")
"""What ``AttackableDetector`` declares besides ``__call__`` (the PGD family's needs), in the order errors list them."""


@runtime_checkable
class MatchingDetector(Protocol):
    """A detector whose priors the ground truth can be matched to: what DAG needs."""

    priors: tf.Tensor  # [P, 4] prior boxes the ground truth is matched to
    num_classes: int  # network classes, background included
    match_threshold: float  # IoU of the ground truth → prior match

    def __call__(self, images: tf.Tensor, training: bool = False) -> Mapping[str, tf.Tensor]:
        """Raw head outputs ``{"loc": [B, P, 4], "logits": [B, P, C], ...}`` of pixel-space images."""


@runtime_checkable
class AttackableDetector(MatchingDetector, Protocol):
    """A detector the PGD family can run: the package's SSD and RobustDet, or any model with these members."""

    def detection_loss(self, outputs: Mapping[str, tf.Tensor], targets: Mapping[str, tf.Tensor],
                       per_image: bool = False) -> Any:
        """``(loss_l, loss_c)``: the MultiBox terms (``[B]`` each with ``per_image``)."""


@runtime_checkable
class RoutedDetector(AttackableDetector, Protocol):
    """A detector whose convolutions a discriminator routes (RobustDet): the attacks on the AID need its mixture."""

    def mixture(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """π ``[B, K]``: the discriminator's softmax over the K kernels of every AAconv."""


def check_attackable(model: Any, attack: str, needs: type = AttackableDetector) -> None:
    """Refuse a model that lacks a member of ``needs`` (``AttackableDetector``, or ``MatchingDetector`` for DAG),
    naming the attack and every missing member."""
    if isinstance(model, needs):
        return
    members = MATCH_MEMBERS if needs is MatchingDetector else ATTACK_MEMBERS
    missing = [name for name in members if name not in dir(model)]
    if not callable(model):
        missing.insert(0, "__call__")
    raise AttributeError(
        f"{attack}: the model {type(model).__name__} has no {', '.join(repr(m) for m in missing)} "
        f"attribute{'s' if len(missing) > 1 else ''}; {attack} needs a detector with {', '.join(members)} and a "
        "call returning the raw head outputs, as the package's SSD and RobustDet provide (attacks/model_protocol.py)."
    )


def has_aid(model: Any) -> bool:
    """Whether the model routes images through a discriminator's mixture (RobustDet, RobustDet*)."""
    return isinstance(model, RoutedDetector)

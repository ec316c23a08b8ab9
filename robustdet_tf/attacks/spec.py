"""``AttackSpec`` and ``DAGSpec``: the settings of one attack, as one value (docs/reference.md#pgd,
docs/reference.md#dag).

Why one object: the same settings describe the attack of adversarial training (``models/adversarial.py``),
every column of a robustness protocol (``evaluation/protocol.py``) and a call of ``attacks.pgd``.  Passing them as
one frozen value means a setting has one name everywhere, is validated once, and is recorded with the results
(``to_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from robustdet_tf.behaviour import CORRECTED, REFERENCE, checked

METHODS = ("clean", "cls", "loc", "con", "cwa", "mtd", "adaptive", "fixed_pi", "aid", "tog_vanishing",
           "tog_fabrication", "tog_mislabeling")
"""``clean`` = no attack; ``cls``/``loc``/``con``/``cwa`` = PGD on that objective; ``mtd`` = the MTD step; the
attacks that adapt to RobustDet's discriminator (``attacks/adaptive.py``): ``adaptive`` = ``base`` loss − λ·D(π),
``fixed_pi`` = ``base`` loss with π held at the clean image's mixture, ``aid`` = D(π) alone; TOG's targeted attacks
(Chow et al. 2020; objectives in ``attacks/objectives.py``): ``tog_vanishing`` = every prior towards background,
``tog_fabrication`` = every prior away from background, ``tog_mislabeling`` = towards the clean detections with
wrong labels."""

ADAPTIVE_METHODS = ("adaptive", "fixed_pi", "aid")
TOG_METHODS = ("tog_vanishing", "tog_fabrication", "tog_mislabeling")
SCHEDULES = ("constant", "apgd")
DIVERGENCES = ("kl", "js")
BASE_OBJECTIVES = ("cls", "loc", "con", "cwa")


def known_settings(spec_class: type, settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``settings`` (a dict or a ``ConfigDict``) as a dict of ``spec_class``'s fields; an unknown key fails with the
    accepted ones (``where`` names the config the settings came from)."""
    settings = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings)
    accepted = [f.name for f in dataclasses.fields(spec_class)]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; accepted keys: {accepted}")
    return settings


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One PGD-family attack in pixel space.

    Attributes:
      method: objective of each step, one of ``METHODS``.
      epsilon: L∞ budget in pixels (reference 8).
      step_size: signed-gradient step in pixels (reference 8 = ε).
      steps: iterations (reference 20); in interleaved training, the renewal period of the held batch.
      random_start: start from uniform noise in the ε-ball (the reference has none).
      con_weights: ``(w_loc, w_cls)`` of the ``con`` objective.
      mtd_per_image: MTD chooses loc vs cls per image (the MTD paper, and the reference's evaluation, which attacks
        one image at a time) instead of per batch (the reference's training).
      cwa_per_image: CWA averages each image's classes alone (the reference's evaluation, one image at a time)
        instead of the batch's classes (the reference's training batches).
      seed: seed of the random start (``None``: nondeterministic).
      restarts: independent runs (the first from ``random_start``'s choice, the others from random starts); each
        image keeps the iterate with the highest objective over all runs and steps (``attacks/strong.py``).
      step_schedule: ``constant`` (α every step) or ``apgd`` (APGD's momentum and per-image step halving from 2ε,
        Croce & Hein 2020; ``step_size`` is then unused).
      aid_weight: λ of the ``adaptive`` objective (``base`` loss − λ·D(π_adv, π_clean)).
      divergence: D of the adaptive attacks, ``kl`` = KL(π_clean ‖ π_adv) or ``js`` (the AID loss' JS-type
        distance).
      base: the detection objective of ``adaptive`` and ``fixed_pi`` (``cls``, ``loc``, ``con``, ``cwa``).

    The first nine settings are the reference's; with their defaults (``restarts=1``, ``step_schedule="constant"``) a
    ``cls``/``loc``/``con``/``cwa``/``mtd`` attack is the reference's final-iterate PGD.
    """

    method: str = "cls"
    epsilon: float = 8.0
    step_size: float = 8.0
    steps: int = 20
    random_start: bool = False
    con_weights: tuple[float, float] = (1.0, 1.0)
    mtd_per_image: bool = False
    cwa_per_image: bool = False
    seed: int | None = None
    restarts: int = 1
    step_schedule: str = "constant"
    aid_weight: float = 1.0
    divergence: str = "kl"
    base: str = "cls"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown attack method {self.method!r}; choose one of {METHODS}")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        set_("epsilon", float(self.epsilon))
        set_("step_size", float(self.step_size))
        set_("steps", int(self.steps))
        set_("random_start", bool(self.random_start))
        set_("con_weights", tuple(float(w) for w in self.con_weights))
        set_("mtd_per_image", bool(self.mtd_per_image))
        set_("cwa_per_image", bool(self.cwa_per_image))
        set_("seed", None if self.seed is None else int(self.seed))
        set_("restarts", int(self.restarts))
        set_("aid_weight", float(self.aid_weight))
        for name, value, allowed in (("step_schedule", self.step_schedule, SCHEDULES), ("divergence", self.divergence,
                                     DIVERGENCES), ("base", self.base, BASE_OBJECTIVES)):
            if value not in allowed:
                raise ValueError(f"attack {name} {value!r} is not one of {allowed}")
        if self.restarts < 1:
            raise ValueError(f"attack restarts must be >= 1 (1 = a single run), got {self.restarts}")
        if self.method == "mtd" and (self.restarts > 1 or self.step_schedule != "constant"):
            raise ValueError("MTD picks between a loc and a cls step each iteration; restarts and the apgd schedule "
                             "apply to cls / loc / con / cwa and the adaptive methods, not to mtd")
        negative = [f"{k}={getattr(self, k):g}" for k in ("epsilon", "step_size", "steps") if getattr(self, k) < 0]
        if negative:
            raise ValueError(f"attack {self.method}: {', '.join(negative)} is negative; epsilon, step_size and steps "
                             "must be >= 0 (the paper: epsilon = step_size = 8, steps = 20)")
        if len(self.con_weights) != 2:
            raise ValueError(f"con_weights must be (w_loc, w_cls), got {self.con_weights}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], where: str = "attack") -> AttackSpec:
        """From a config mapping; an unknown key fails with the accepted ones (``where`` names the config)."""
        return cls(**known_settings(cls, settings, where))

    @property
    def per_image(self) -> bool:
        """Whether the attack keeps a best iterate per image (``attacks/strong.py``) instead of the final one."""
        return self.restarts > 1 or self.step_schedule != "constant" or self.method in ADAPTIVE_METHODS

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "con_weights": list(self.con_weights)}

    def replace(self, **changes) -> AttackSpec:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class DAGSpec:
    """One DAG attack (``attacks/dag.py``; docs/reference.md#dag).

    Attributes:
      steps: iterations (reference 150).
      gamma: the max-norm of each step's perturbation (reference 0.5).
      variant: ``"reference"`` (the official code: gradient at the clean image plus the last step, no bound, no
        early stop) or ``"corrected"`` (ε-bounded, early stopping); ``robustdet_tf.behaviour``'s vocabulary.
      epsilon: ``‖R‖∞`` bound of the corrected variant (``None`` with ``"reference"``).
      seed: the stateless seed of the adversarial labels.
      match_threshold: IoU of the ground truth → prior match (``None``: the model's).
    """

    steps: int = 150
    gamma: float = 0.5
    variant: str = REFERENCE
    epsilon: float | None = None
    seed: int = 0
    match_threshold: float | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        set_("steps", int(self.steps))
        set_("gamma", float(self.gamma))
        checked("dag variant", self.variant)
        set_("seed", int(self.seed))
        if self.epsilon is not None:
            set_("epsilon", float(self.epsilon))
        if self.steps < 0:
            raise ValueError(f"dag: steps must be >= 0, got {self.steps}.")
        if self.variant == CORRECTED and (self.epsilon is None or self.epsilon < 0):
            raise ValueError(f"dag: the bounded variant (variant='corrected') needs epsilon >= 0, got {self.epsilon}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

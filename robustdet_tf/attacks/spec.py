"""``AttackSpec``: the settings of one PGD-family attack, as one value (spec §5.1, §5.2, §6.3).

Why one object: the same eight settings describe the attack of adversarial training (``models/adversarial.py``),
every column of a robustness protocol (``evaluation/protocol.py``) and a call of ``attacks.pgd``.  Passing them as
one frozen value means a setting has one name everywhere, is validated once, and is recorded with the results
(``to_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

METHODS = ("clean", "cls", "loc", "con", "cwa", "mtd")
"""``clean`` = no attack; ``cls``/``loc``/``con``/``cwa`` = PGD on that objective; ``mtd`` = the MTD step."""


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
      mtd_per_image: MTD chooses loc vs cls per image (the MTD paper) instead of per batch (the reference).
      seed: seed of the random start (``None``: nondeterministic).
    """

    method: str = "cls"
    epsilon: float = 8.0
    step_size: float = 8.0
    steps: int = 20
    random_start: bool = False
    con_weights: tuple[float, float] = (1.0, 1.0)
    mtd_per_image: bool = False
    seed: int | None = None

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
        set_("seed", None if self.seed is None else int(self.seed))
        if self.epsilon < 0 or self.step_size < 0 or self.steps < 0:
            raise ValueError(f"attack epsilon, step_size and steps must be >= 0; got {self}")
        if len(self.con_weights) != 2:
            raise ValueError(f"con_weights must be (w_loc, w_cls), got {self.con_weights}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], where: str = "attack") -> AttackSpec:
        """From a config mapping; an unknown key fails with the accepted ones (``where`` names the config)."""
        settings = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings)
        unknown = sorted(set(settings) - set(cls.keys()))
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; accepted keys: {list(cls.keys())}")
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "con_weights": list(self.con_weights)}

    def replace(self, **changes) -> AttackSpec:
        return dataclasses.replace(self, **changes)

"""PGD-step sweep (paper Fig. 7a/b): mAP as a function of the number of PGD steps under A_cls and A_loc.

Why: a robustness number at 20 steps says nothing about whether the attack had converged, nor whether a defence
only slows the attack down.  The sweep shows the curve; a flat tail means the attack has converged at that budget.

How: PGD-s is the first s iterates of PGD-s' for s < s' (the same start, the same steps), so one run of the
largest step count per batch gives every point of the curve.  Each batch is attacked in chunks between the
requested counts (one ``tf.function`` with a graph ``while`` loop of ``attacks.pgd.attack_step``), the detections
at each count feed that count's metric.  The result equals running ``attacks.pgd.pgd`` with
``spec.replace(steps=s)`` once per s (tested), at the cost of the largest s alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf.attacks.budget import repeat
from robustdet_tf.attacks.pgd import attack_step, random_start
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.compiled import traced_once
from robustdet_tf.evaluation.evaluate import attack_targets


def check_steps(steps: Sequence[int]) -> list[int]:
    """The sweep's step counts, sorted and unique; refused unless all are non-negative ints."""
    try:
        counts = sorted({int(s) for s in steps})
    except (TypeError, ValueError) as err:
        raise ValueError(f"PGD-step sweep: steps must be a sequence of ints such as (1, 2, 5, 10, 20, 50); got "
                         f"{steps!r} (config.analysis.sweep_steps).") from err
    if not counts or counts[0] < 0:
        raise ValueError(f"PGD-step sweep: steps must be non-empty and >= 0; got {steps!r} "
                         "(config.analysis.sweep_steps).")
    return counts


def _advance_fn(model: keras.Model, spec: AttackSpec):
    """A compiled ``(adv, clean, targets, n) → adv after n more attack steps``."""

    def advance(adv, clean, targets, n):
        return repeat(n, lambda x: attack_step(model, x, clean, targets, spec), adv)

    return traced_once(advance)


def iterates(model: keras.Model, spec: AttackSpec,
             counts: Sequence[int]) -> Callable[[tf.Tensor, Mapping[str, tf.Tensor]], Iterator[tuple[int, tf.Tensor]]]:
    """``(images, targets) → iterator of (s, PGD-s images)`` for each count ``s`` in ``counts`` (sorted), from one
    run of ``max(counts)`` steps; ``targets`` are those the attack aims at."""
    counts = check_steps(counts)
    advance = _advance_fn(model, spec)

    def run(images, targets):
        clean = tf.convert_to_tensor(images, tf.float32)
        adv = random_start(clean, spec.epsilon, spec.seed) if spec.random_start else clean
        done = 0
        for count in counts:
            if count > done:
                adv = advance(adv, clean, targets, tf.constant(count - done))
                done = count
            yield count, adv

    return run


def step_sweep(model: keras.Model, batches: Iterable, specs: Mapping[str, AttackSpec], steps: Sequence[int],
               metric_factory: Callable[[], Any], max_batches: int | None = None) -> dict[str, dict[int, float]]:
    """``{attack name: {steps: mAP}}`` of ``model`` on ``(images, targets)`` batches, for every PGD-family
    ``AttackSpec`` in ``specs`` (its own ``steps`` is ignored) and each count of ``steps`` (0 = no step: the clean
    images, or the random start)."""
    counts = check_steps(steps)
    detect = traced_once(model.detect)
    metrics = {name: {s: metric_factory() for s in counts} for name in specs}
    runs = {name: iterates(model, spec, counts) for name, spec in specs.items()}
    seen = 0
    for i, (images, targets) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        seen += 1
        aimed = attack_targets(targets)
        for name, run in runs.items():
            for count, adv in run(images, aimed):
                metrics[name][count].update(detect(adv), targets)
    if not seen:
        raise ValueError("PGD-step sweep got no batches: give at least one (images, targets) batch.")
    return {name: {s: float(m.result()["mAP"]) for s, m in per_count.items()} for name, per_count in metrics.items()}

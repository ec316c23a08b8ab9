"""PGD-step sweep: each point equals a separate PGD run of that many steps (images and mAP), from one run."""

from functools import partial

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.analysis.step_sweep import check_steps, iterates, step_sweep
from robustdet_tf.attacks.pgd import pgd
from robustdet_tf.evaluation.evaluate import attack_targets, evaluate_detections, make_metric
from robustdet_tf.evaluation.protocol import attack_spec, make_protocol
from tests.conftest import TRAINED_CLASS_NAMES as CLASS_NAMES

COUNTS = (0, 1, 3)


@pytest.mark.parametrize("protocol, attack", [("reference", "A_cls"), ("reference", "A_loc"), ("strong", "A_cls")])
def test_each_iterate_is_the_pgd_run_of_that_many_steps(trained_ssd, protocol, attack):
    model, batches = trained_ssd
    spec = attack_spec(attack, make_protocol(protocol))  # "strong": random start (seeded), α = 2
    images, targets = next(iter(batches))
    aimed = attack_targets(targets)
    run_pgd = tf.function(lambda x, s: pgd(model, x, aimed, spec.replace(steps=s)), reduce_retracing=True)
    seen = []
    for count, adv in iterates(model, spec, COUNTS)(images, aimed):
        want = run_pgd(images, count)
        np.testing.assert_allclose(adv.numpy(), want.numpy(), atol=1e-3)
        seen.append(count)
    assert seen == list(COUNTS)
    assert np.abs(adv.numpy() - images.numpy()).max() > 0  # the attack moved the pixels


def test_sweep_map_equals_separate_evaluations(trained_ssd):
    model, batches = trained_ssd
    protocol = make_protocol("reference")
    metric = partial(make_metric, "voc07", CLASS_NAMES, offsets="corrected")
    specs = {name: attack_spec(name, protocol) for name in ("A_cls", "A_loc")}
    sweep = step_sweep(model, batches, specs, (3, 0, 1, 1), metric)  # unsorted, repeated: cleaned up
    assert list(sweep) == ["A_cls", "A_loc"] and all(list(v) == list(COUNTS) for v in sweep.values())
    for name, spec in specs.items():
        for count in COUNTS:
            attack = partial(pgd, spec=spec.replace(steps=count)) if count else None
            want = evaluate_detections(model, batches, metric(), attack=attack)["mAP"]
            assert sweep[name][count] == pytest.approx(want, abs=1e-9), (name, count)
    assert sweep["A_cls"][0] > 0.05 and sweep["A_cls"][3] < sweep["A_cls"][0]  # trained, and the attack bites


def test_bad_step_lists_are_refused():
    assert check_steps([5, 1, 1, 0]) == [0, 1, 5]
    for bad in ([], [-1, 2], ["x"]):
        with pytest.raises(ValueError, match="sweep_steps"):
            check_steps(bad)

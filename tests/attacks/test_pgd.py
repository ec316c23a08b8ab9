"""PGD and MTD steps in pixel space (docs/reference.md#pgd, #attack-objectives-and-mtd)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.attacks import objectives
from robustdet_tf.attacks import pgd as pgd_lib
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles


@pytest.fixture(scope="module")
def model_and_batch():
    keras.utils.set_random_seed(0)  # the weights, whichever tests ran before in this worker
    model = SSD(**TINY_SSD)
    model.build()
    images, targets = rectangles(4, 64, seed=2)
    images = np.clip(images, 20, 235)  # keep away from the [0, 255] clip
    return model, tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}


def test_first_step_is_signed_gradient_and_perturbation_is_ternary(model_and_batch):
    model, x0, targets = model_and_batch
    grad = pgd_lib.input_gradient(objectives.make_objective("cls"), model, x0, targets)
    step1 = pgd_lib.pgd_step(model, x0, x0, targets, AttackSpec("cls", 8.0, 8.0))
    np.testing.assert_allclose(step1.numpy(), np.clip(x0.numpy() + 8 * np.sign(grad.numpy()), 0, 255))
    adv = pgd_lib.pgd(model, x0, targets, AttackSpec("cls", epsilon=8.0, step_size=8.0, steps=3))
    delta = np.round(adv.numpy() - x0.numpy(), 3)
    assert set(np.unique(delta)) <= {-8.0, 0.0, 8.0}
    assert np.abs(delta).max() == 8.0


def test_attack_raises_its_objective(model_and_batch):
    model, x0, targets = model_and_batch
    for method, index in (("cls", 1), ("loc", 0)):
        adv = pgd_lib.pgd(model, x0, targets, AttackSpec(method, steps=3))
        before = objectives.detection_terms(model, x0, targets)[index]
        after = objectives.detection_terms(model, adv, targets)[index]
        assert float(after) > float(before), method
    cwa = objectives.make_objective("cwa")
    adv = pgd_lib.pgd(model, x0, targets, AttackSpec("cwa", steps=2))
    assert float(cwa(model, adv, targets)) > float(cwa(model, x0, targets))


def test_projection_and_random_start(model_and_batch):
    model, x0, targets = model_and_batch
    adv = pgd_lib.pgd(model, x0, targets, AttackSpec("con", 4.0, 1.5, steps=4, random_start=True, seed=3))
    assert float(tf.reduce_max(tf.abs(adv - x0))) <= 4.0 + 1e-4
    near_edge = tf.fill([1, 64, 64, 3], 254.0)
    projected = pgd_lib.project(near_edge + 10.0, near_edge, 8.0)
    assert float(tf.reduce_max(projected)) == 255.0


def test_mtd_keeps_the_candidate_with_larger_total_loss(model_and_batch):
    model, x0, targets = model_and_batch
    out = pgd_lib.attack_step(model, x0, x0, targets, AttackSpec("mtd"))
    cand_loc = pgd_lib.pgd_step(model, x0, x0, targets, AttackSpec("loc"))
    cand_cls = pgd_lib.pgd_step(model, x0, x0, targets, AttackSpec("cls"))
    total = lambda x: float(tf.add_n(objectives.detection_terms(model, x, targets)))  # noqa: E731
    expected = cand_loc if total(cand_loc) > total(cand_cls) else cand_cls
    np.testing.assert_allclose(out.numpy(), expected.numpy())
    per_image = pgd_lib.attack_step(model, x0, x0, targets, AttackSpec("mtd", mtd_per_image=True)).numpy()
    for i in range(4):  # each image is one of the two candidates
        assert np.allclose(per_image[i], cand_loc[i]) or np.allclose(per_image[i], cand_cls[i])


def test_pgd_runs_in_graph(model_and_batch):
    model, x0, targets = model_and_batch
    spec = AttackSpec("cls", steps=2)
    fn = tf.function(lambda x, t: pgd_lib.pgd(model, x, t, spec))
    np.testing.assert_allclose(fn(x0, targets).numpy(), pgd_lib.pgd(model, x0, targets, spec).numpy(),
                               atol=1e-3)


def shared_classes(model, images, targets):
    """The batch with labels whose classes recur across images in other proportions (images 0 and 3 hold two or three
    classes), so a batch-wide class average weighs each image's classes otherwise than the image alone does."""
    labels = tf.constant([[2, 1, -1], [1, -1, -1], [0, -1, -1], [1, 2, 0]])
    return model, images, {"boxes": targets["boxes"], "labels": labels}


@pytest.mark.parametrize("spec", [AttackSpec("cwa", steps=2, cwa_per_image=True),
                                  AttackSpec("mtd", steps=2, mtd_per_image=True)], ids=["cwa", "mtd"])
def test_per_image_attacks_take_each_image_as_its_batch_of_one_would(model_and_batch, spec):
    """``eval_attack.py`` attacks one image at a time; with the per-image switches a batch gives every image the
    adversarial image it gets alone, so a table does not depend on the evaluation batch size."""
    model, x0, targets = shared_classes(*model_and_batch)
    batched = pgd_lib.pgd(model, x0, targets, spec).numpy()
    alone = np.concatenate([pgd_lib.pgd(model, x0[i:i + 1], {k: v[i:i + 1] for k, v in targets.items()}, spec).numpy()
                            for i in range(4)])
    # Equal except where a gradient component lies at rounding level: its sign can differ between batch shapes
    # (oneDNN picks its kernels by shape; one value in 49152 on the seeded weights).  A coupling of the images
    # moves more than 1e-3 of them (the next test), ten times this bound.
    assert np.mean(batched != alone) <= 1e-4


def test_batch_coupled_cwa_differs_from_the_batch_of_one(model_and_batch):
    """Without ``cwa_per_image`` the classes are averaged over the batch (the reference's training): another attack."""
    model, x0, targets = shared_classes(*model_and_batch)
    spec = AttackSpec("cwa", steps=2)
    batched = pgd_lib.pgd(model, x0, targets, spec).numpy()
    alone = np.concatenate([pgd_lib.pgd(model, x0[i:i + 1], {k: v[i:i + 1] for k, v in targets.items()}, spec).numpy()
                            for i in range(4)])
    assert np.mean(batched != alone) > 1e-3

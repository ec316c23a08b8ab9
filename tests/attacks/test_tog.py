"""TOG's targeted attacks (Chow et al. 2020) as PGD-family methods: vanishing, fabrication and mislabeling
(``attacks/objectives.py``), their budget, their independence of the batch and their table columns."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf import boxes as box_ops
from robustdet_tf.attacks import objectives, strong
from robustdet_tf.attacks import pgd as pgd_lib
from robustdet_tf.attacks.spec import METHODS, TOG_METHODS, AttackSpec
from robustdet_tf.evaluation import protocol as P
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles, train_on_detection_loss

TOG_BUDGET = dict(epsilon=8.0, step_size=2.0, steps=10)
"""TOG's own budget (ε = 8/255, α = 2/255, 10 steps) in pixels."""
SCORE = 0.5
"""A detection counts above this score: TOG's threshold for SSD (``objectives.TOG_SCORE_THRESHOLD``)."""
TINT, GREY = 16.0, 160.0


def tinted_rectangles(geometries: int, seed: int):
    """Rectangles whose class is only their tint: each of ``geometries`` layouts three times, its classes rotated,
    every rectangle grey (160) plus 16 on the channel of its class, on a dark background (0–60).

    Why not ``helpers.rectangles``: its classes are saturated colours, and a tiny detector trained on a few of its
    images tells them apart by position and shape (it ignores a swap of the colour channels), so no small budget can
    relabel a box.  Here the layout says nothing about the class, the detector has to read the tint, and a label
    flip (a tint difference of 16) is within an 8-pixel budget while a box (a contrast of 100 or more) is not."""
    _, layout = rectangles(geometries, 64, seed=seed)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for shift in range(3):
        out = rng.uniform(0, 60, (geometries, 64, 64, 3)).astype(np.float32)
        shifted = np.where(layout["labels"] >= 0, (layout["labels"] + shift) % 3, -1).astype(np.int32)
        for i in range(geometries):
            for box, label in zip(layout["boxes"][i], shifted[i]):
                if label >= 0:
                    x0, y0, x1, y1 = (int(v * 64) for v in box)
                    out[i, y0:y1, x0:x1] = GREY + TINT * (np.arange(3) == label)
        images.append(out)
        labels.append(shifted)
    return np.concatenate(images), {"boxes": np.concatenate([layout["boxes"]] * 3), "labels": np.concatenate(labels)}


@pytest.fixture(scope="module")
def trained():
    """A tiny SSD that detects every rectangle of its 24 images with the right class (checked below)."""
    keras.utils.set_random_seed(0)  # the weights, whichever tests ran before in this worker
    model = SSD(**TINY_SSD)
    model.build()
    images, targets = tinted_rectangles(8, seed=2)
    train_on_detection_loss(model, images, targets, steps=200)
    return model, tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}


def detections(model, images, threshold=SCORE):
    """Per image, ``(boxes [n, 4] rel_yxyx, classes [n])`` of the detections scoring above ``threshold``."""
    found = model.detect(images)
    keep = found["detection_scores"].numpy() > threshold
    return [(b[k], c[k]) for b, c, k in zip(found["detection_boxes"].numpy(), found["detection_classes"].numpy(), keep)]


def count(model, images) -> int:
    return sum(len(classes) for _, classes in detections(model, images))


def sign_noise(images, epsilon, seed=0):
    """Random noise at the corners of the ε-ball (the largest random perturbation the budget allows)."""
    noise = np.random.default_rng(seed).choice([-epsilon, epsilon], size=images.shape).astype(np.float32)
    return tf.clip_by_value(images + noise, 0.0, 255.0)


def attack(model, images, targets, method, **settings):
    spec = AttackSpec(method, **{**TOG_BUDGET, **settings})
    return tf.function(lambda x, t: pgd_lib.pgd(model, x, t, spec))(images, targets)


def box_fates(model, clean, adv, min_score=0.3):
    """For every clean detection: the IoU of the best-overlapping attacked detection scoring above ``min_score`` (0 if
    none) and whether that detection has another class."""
    ious, relabelled = [], []
    for (boxes, classes), (adv_boxes, adv_classes) in zip(detections(model, clean),
                                                          detections(model, adv, min_score)):
        for box, label in zip(boxes, classes):
            iou = box_ops.pairwise_iou(tf.constant(box[None]), tf.constant(adv_boxes)).numpy()[0] if len(
                adv_boxes) else np.zeros(1)
            best = int(np.argmax(iou))
            ious.append(float(iou[best]))
            relabelled.append(bool(len(adv_boxes)) and adv_classes[best] != label)
    return np.asarray(ious), np.asarray(relabelled)


def test_the_test_detector_finds_every_rectangle_with_its_class(trained):
    model, images, targets = trained
    found = detections(model, images)
    truth = [np.sort(labels[labels >= 0] + 1) for labels in targets["labels"].numpy()]
    assert all(np.array_equal(np.sort(classes), want) for (_, classes), want in zip(found, truth))


# -- the objectives --------------------------------------------------------------------------------------------------
def test_vanishing_and_fabrication_are_the_mean_background_log_likelihood_and_its_negative(trained):
    model, images, targets = trained
    x = images[:5]
    logits = model(x, training=False)["logits"].numpy().astype(np.float64)
    log_bg = logits[..., 0] - np.log(np.exp(logits).sum(-1))  # [B, P]
    per_image = log_bg.mean(axis=1)
    for name, sign in (("tog_vanishing", 1.0), ("tog_fabrication", -1.0)):
        np.testing.assert_allclose(objectives.make_per_image_objective(name)(model, x, targets).numpy(),
                                   sign * per_image, rtol=1e-5)
        assert float(objectives.make_objective(name)(model, x, targets)) == pytest.approx(sign * per_image.mean(),
                                                                                          rel=1e-5)


def test_mislabeling_descends_the_detection_loss_towards_its_targets(trained):
    model, images, targets = trained
    x = images[:5]
    aimed = objectives.mislabeled_targets(model, x)
    loss_l, loss_c = (v.numpy() for v in model.detection_loss(model(x, training=False), aimed, per_image=True))
    np.testing.assert_allclose(objectives.make_per_image_objective("tog_mislabeling")(model, x, aimed).numpy(),
                               -(loss_l + loss_c), rtol=1e-5)
    batch = model.detection_loss(model(x, training=False), aimed)
    assert float(objectives.make_objective("tog_mislabeling")(model, x, aimed)) == pytest.approx(
        -float(tf.add_n(batch)), rel=1e-5)


def test_mislabeled_targets_are_the_clean_detections_with_their_most_likely_wrong_class(trained):
    model, images, _ = trained
    aimed = objectives.mislabeled_targets(model, images)
    outputs = model(images, training=False)
    probs = tf.nn.softmax(outputs["logits"]).numpy()
    decoded = box_ops.decode(outputs["loc"], model.priors).numpy()  # [B, P, 4] rel_xyxy
    relabelled = 0
    for i, (boxes, classes) in enumerate(detections(model, images)):
        labels = aimed["labels"][i].numpy()
        kept = labels >= 0
        assert kept.sum() == len(classes) and np.all(labels[~kept] == -1)
        want = box_ops.convert_format(tf.constant(boxes), "rel_yxyx", "rel_xyxy").numpy()
        np.testing.assert_allclose(aimed["boxes"][i].numpy()[kept], want, atol=1e-5)  # same boxes, same order
        for box, label, target in zip(want, classes, labels[kept]):
            prior = int(np.argmin(np.abs(decoded[i] - box).sum(-1)))  # the prior that made the detection
            wrong = probs[i, prior, 1:].copy()
            wrong[int(label) - 1] = -1.0
            assert target != label - 1 and target == int(np.argmax(wrong))
            relabelled += 1
    assert relabelled == count(model, images) > 40


# -- what the attacks do ---------------------------------------------------------------------------------------------
def test_vanishing_removes_detections(trained):
    model, images, targets = trained
    clean, noise = count(model, images), count(model, sign_noise(images, 8.0))
    vanished = count(model, attack(model, images, targets, "tog_vanishing"))
    assert vanished <= clean / 2 and vanished <= noise / 2, (clean, noise, vanished)


def test_fabrication_adds_detections(trained):
    model, images, targets = trained
    clean, noise = count(model, images), count(model, sign_noise(images, 8.0))
    fabricated = count(model, attack(model, images, targets, "tog_fabrication"))
    assert fabricated >= 1.25 * max(clean, noise), (clean, noise, fabricated)


def test_mislabeling_keeps_the_boxes_and_changes_their_labels(trained):
    model, images, targets = trained
    adv = attack(model, images, targets, "tog_mislabeling")
    ious, relabelled = box_fates(model, images, adv)
    assert np.mean(ious >= 0.5) >= 0.9, ious  # the boxes stay where they were
    moved = np.mean(relabelled & (ious >= 0.5))
    assert moved > 0.6, relabelled  # with another class, for most of them
    noise_ious, noise_relabelled = box_fates(model, images, sign_noise(images, 8.0))
    # Chance relabels some (a tint of 16 is fragile: a third of the boxes under ±8 noise), the attack far more.
    assert moved >= np.mean(noise_relabelled & (noise_ious >= 0.5)) + 0.25


# -- the budget, the batch, the graph --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", TOG_METHODS)
def test_attacks_stay_in_the_budget_and_the_pixel_range(trained, method):
    model, images, targets = trained
    x, t = images[:6], {k: v[:6] for k, v in targets.items()}
    for settings in ({}, {"epsilon": 4.0, "random_start": True, "seed": 1, "restarts": 2, "steps": 3}):
        adv = attack(model, x, t, method, **settings).numpy()
        epsilon = settings.get("epsilon", 8.0)
        assert np.abs(adv - x.numpy()).max() <= epsilon + 1e-3
        assert adv.min() >= 0.0 and adv.max() <= 255.0
        assert np.abs(adv - x.numpy()).max() >= epsilon - 1e-3  # the attack moved


@pytest.mark.parametrize("method, settings", [
    ("tog_vanishing", {}), ("tog_fabrication", {}), ("tog_mislabeling", {}),
    ("tog_mislabeling", {"step_schedule": "apgd", "steps": 4}),
], ids=["vanishing", "fabrication", "mislabeling", "mislabeling-apgd"])
def test_a_batch_attacks_each_image_as_it_would_alone(trained, method, settings):
    """Each image's targets and objective are its own: a table does not depend on ``eval.batch_size``.  (Not with
    random starts: their noise is drawn for the batch's shape, for every method alike.)"""
    model, images, targets = trained
    idx = [0, 9, 17, 22]  # images with one, two and three rectangles
    x, t = tf.gather(images, idx), {k: tf.gather(v, idx) for k, v in targets.items()}
    spec = AttackSpec(method, **{**TOG_BUDGET, **settings})
    run = tf.function(lambda x, t: pgd_lib.pgd(model, x, t, spec))
    batched = run(x, t).numpy()
    alone = np.concatenate([run(x[i:i + 1], {k: v[i:i + 1] for k, v in t.items()}).numpy() for i in range(4)])
    # Equal except where a gradient component lies at rounding level (see test_pgd's per-image test).
    assert np.mean(batched != alone) <= 1e-4


def test_a_single_mislabeling_step_aims_at_the_clean_detections(trained):
    """``attack_step`` called alone (the step sweep) takes the step ``pgd`` takes, although it is given the ground
    truth, not the mislabelled targets; so does the best-iterate engine."""
    model, images, targets = trained
    x, t = images[:4], {k: v[:4] for k, v in targets.items()}
    spec = AttackSpec("tog_mislabeling", **{**TOG_BUDGET, "steps": 1})
    step = tf.function(lambda x, t: pgd_lib.attack_step(model, x, x, t, spec))(x, t).numpy()
    # Equal up to gradient components at rounding level, whose sign two graphs may compute differently.
    assert np.mean(step != attack(model, x, t, "tog_mislabeling", steps=1).numpy()) <= 1e-4
    on_ground_truth = pgd_lib.pgd_step(model, x, x, t, spec)  # the same objective on the wrong targets
    assert np.mean(step != on_ground_truth.numpy()) > 0.1
    best = tf.function(lambda x, t: strong.strong_pgd(model, x, t, spec))(x, t).numpy()
    assert np.mean(best != step) <= 1e-4  # one step from the clean image: the step is the best iterate


# -- settings and columns ----------------------------------------------------------------------------------------------
def test_tog_methods_are_attack_methods_and_table_columns():
    assert set(TOG_METHODS) <= set(METHODS)
    assert {P.PGD_METHODS[c] for c in ("TOG_vanishing", "TOG_fabrication", "TOG_mislabeling")} == set(TOG_METHODS)
    assert {"TOG_vanishing", "TOG_fabrication", "TOG_mislabeling"} <= set(P.ATTACKS)


@pytest.mark.parametrize("name", sorted(P.PROTOCOLS))
def test_tog_columns_take_the_protocol_pgd_settings(name):
    protocol = P.make_protocol(name, {"seed": 5})
    pgd = protocol["pgd"]
    for column, method in (("TOG_vanishing", "tog_vanishing"), ("TOG_fabrication", "tog_fabrication"),
                           ("TOG_mislabeling", "tog_mislabeling")):
        spec = P.attack_spec(column, protocol)
        assert spec == AttackSpec.from_dict({**pgd, "method": method, "seed": 5})
        assert (spec.epsilon, spec.step_size, spec.steps, spec.restarts) == (
            pgd["epsilon"], pgd["step_size"], pgd["steps"], pgd["restarts"])
        attack_fn = P.make_attack(column, protocol)
        assert attack_fn.func is pgd_lib.pgd and attack_fn.keywords == {"spec": spec}
    tog = P.make_protocol(name, {"pgd": {"epsilon": 8, "step_size": 2, "steps": 10, "random_start": True}})
    spec = P.attack_spec("TOG_mislabeling", tog)  # TOG's own budget, as docs/evaluation.md writes it
    assert (spec.epsilon, spec.step_size, spec.steps, spec.random_start) == (8.0, 2.0, 10, True)


def test_unknown_tog_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown attack method 'tog_vanish'; choose one of \(.*'tog_vanishing', "
                                         r"'tog_fabrication', 'tog_mislabeling'\)"):
        AttackSpec("tog_vanish")
    with pytest.raises(ValueError, match=r"unknown attack objective 'tog'; choose one of \(.*'tog_mislabeling'\)"):
        objectives.make_objective("tog")
    with pytest.raises(ValueError, match=r"unknown attack objective 'tog'"):
        objectives.make_per_image_objective("tog")
    with pytest.raises(ValueError, match=r"unknown attack 'TOG'; choose from \(.*'TOG_vanishing'"):
        P.make_attack("TOG", P.make_protocol("reference"))


def test_mislabeling_needs_two_object_classes():
    keras.utils.set_random_seed(0)
    model = SSD(**{**TINY_SSD, "num_classes": 2})
    with pytest.raises(ValueError, match="tog_mislabeling needs at least two object classes to swap; the model "
                                         "has 1"):
        objectives.mislabeled_targets(model, tf.zeros([1, 64, 64, 3]))

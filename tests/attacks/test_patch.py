"""The universal adversarial patch (attacks/patch.py): its box, its placements, its fit and its spec."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from ml_collections import ConfigDict

from robustdet_tf.attacks import objectives
from robustdet_tf.attacks import patch as patch_lib
from robustdet_tf.attacks.patch import PatchSpec, apply_patch, fit_universal_patch, patch_attack, patch_locations
from robustdet_tf.evaluation.evaluate import detection_step
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles, train_on_detection_loss

SIZE = TINY_SSD["image_size"]
SPEC = PatchSpec(size=0.25, steps=10, step_size=16.0, seed=0, batch_size=8)  # a 16 × 16 patch on 64 × 64 images


def as_tensors(images, targets):
    return tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}


@pytest.fixture(scope="module")
def model():
    """A tiny SSD that detects the rectangles a little (60 Adam steps), so a patch has detections to spoil."""
    keras.utils.set_random_seed(0)  # the weights, whichever tests ran before in this worker
    model = SSD(**TINY_SSD)
    model.build()
    images, targets = rectangles(16, SIZE, seed=1)
    return train_on_detection_loss(model, images, targets, steps=60)


@pytest.fixture(scope="module")
def train_batches():
    images, targets = rectangles(16, SIZE, seed=1)
    return tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)


@pytest.fixture(scope="module")
def held_out():
    return as_tensors(*rectangles(16, SIZE, seed=9))


def box_of_changes(before: np.ndarray, after: np.ndarray):
    """Per image, the bounding box ``(top, left, bottom, right)`` of the pixels that differ (None if none do)."""
    out = []
    for changed in np.any(before != after, axis=-1):
        rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
        out.append(None if not len(rows) else (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1))
    return out


# -- the box ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("placement", ["random", "center"])
def test_the_patch_stays_inside_its_box_and_inside_0_255(placement):
    spec = SPEC.replace(placement=placement)
    images, _ = rectangles(6, SIZE, seed=3)
    images[0] = 255.0  # an image at the top of the range: the patch must not push it beyond 255
    patch = tf.random.stateless_uniform([16, 16, 3], [5, 6], -100.0, 400.0)  # out of range on purpose: clipped
    keys = tf.range(6, dtype=tf.int64)
    out = apply_patch(tf.constant(images), patch, spec, keys).numpy()
    tops, lefts = (v.numpy() for v in patch_locations(spec, keys, SIZE, SIZE, 16))
    assert out.min() >= 0.0 and out.max() <= 255.0
    clipped = np.clip(patch.numpy(), 0.0, 255.0)
    for i, (top, left) in enumerate(zip(tops, lefts)):
        assert 0 <= top <= SIZE - 16 and 0 <= left <= SIZE - 16
        np.testing.assert_array_equal(out[i, top : top + 16, left : left + 16], clipped)  # pasted exactly
        outside = np.ones((SIZE, SIZE), bool)
        outside[top : top + 16, left : left + 16] = False
        np.testing.assert_array_equal(out[i][outside], images[i][outside])  # every other pixel the input's own
    for box in box_of_changes(images, out):  # independently of patch_locations: the changes fit in one 16 × 16 box
        assert box is not None and box[2] - box[0] <= 16 and box[3] - box[1] <= 16
    if placement == "center":
        assert set(tops) == set(lefts) == {24}
    else:
        assert len(set(zip(tops, lefts))) == 6  # a location per image


def test_random_placements_cover_every_corner_that_keeps_the_patch_inside():
    tops, lefts = (v.numpy() for v in patch_locations(SPEC, tf.range(4000, dtype=tf.int64), SIZE, SIZE, 16))
    for corner in (tops, lefts):
        assert set(corner) == set(range(SIZE - 16 + 1))  # 49 values, each drawn (4000 draws)
        assert np.abs(np.bincount(corner) / len(corner) - 1 / 49).max() < 0.01  # about uniform
    other = patch_locations(SPEC.replace(seed=1), tf.range(4000, dtype=tf.int64), SIZE, SIZE, 16)[0].numpy()
    assert np.mean(other == tops) < 0.1  # the seed chooses the draws


# -- the same image, the same place ----------------------------------------------------------------------------
def test_an_image_gets_the_same_placement_in_any_batch_any_call_and_any_model(model, held_out):
    images, targets = held_out
    spec = SPEC
    attack = patch_attack(patch_lib.initial_patch(spec.replace(seed=7), 16), spec)
    once = attack(model, images[:6], targets).numpy()
    np.testing.assert_array_equal(attack(model, images[:6], targets).numpy(), once)  # every call
    order = [5, 2, 0]  # another batch: other companions, other positions, another size
    alone = attack(model, tf.gather(images, order), targets).numpy()
    np.testing.assert_array_equal(alone, once[order])
    tops = {tuple(box[:2]) for box in box_of_changes(images[:6].numpy(), once)}
    assert len(tops) == 6  # the images do get different locations

    keras.utils.set_random_seed(1)
    other_model = SSD(**TINY_SSD)  # other weights
    other_model.build()
    batch_targets = {k: v[:6] for k, v in targets.items()}
    for detector in (model, other_model):  # inside the table's compiled step (no AutoGraph), per model
        _, adv = detection_step(detector, attack)(images[:6], batch_targets)
        np.testing.assert_array_equal(adv.numpy(), once)


def test_apply_patch_places_by_index_not_by_content(held_out):
    images, _ = held_out
    patch = patch_lib.initial_patch(SPEC, 16)
    first = apply_patch(images[:3], patch, SPEC, tf.constant([10, 11, 12])).numpy()
    again = apply_patch(tf.gather(images, [1, 2, 0]), patch, SPEC, tf.constant([10, 11, 12])).numpy()
    # image 1 now carries index 10: it gets image 0's old location
    boxes_first, boxes_again = box_of_changes(images[:3].numpy(), first), box_of_changes(
        tf.gather(images, [1, 2, 0]).numpy(), again)
    assert [b[:2] for b in boxes_again] == [b[:2] for b in boxes_first]


def test_a_patch_of_the_wrong_size_is_refused(held_out):
    images, _ = held_out
    with pytest.raises(ValueError, match=r"the patch is 12×12 pixels, but spec.size=0.25 of these 64×64 images asks "
                                         r"for 16×16"):
        apply_patch(images, tf.zeros([12, 12, 3]), SPEC, tf.range(16))
    with pytest.raises(ValueError, match=r"a patch is \[side, side, 3\] RGB pixels"):
        patch_attack(tf.zeros([16, 16]), SPEC)


# -- the fit ---------------------------------------------------------------------------------------------------
def test_fitting_is_deterministic_traced_once_and_independent_of_the_input_batching(model, train_batches,
                                                                                    monkeypatch):
    traces = []
    make = patch_lib.make_objective

    def counted(name):
        objective = make(name)

        def run(*args):
            traces.append(name)  # runs only while the step is traced
            return objective(*args)

        return run

    monkeypatch.setattr(patch_lib, "make_objective", counted)
    spec = SPEC.replace(steps=3)
    first = fit_universal_patch(model, train_batches, spec)
    assert traces == ["cls"]  # three steps, one trace
    assert first.shape == (16, 16, 3) and first.dtype == tf.float32
    assert float(tf.reduce_min(first)) >= 0.0 and float(tf.reduce_max(first)) <= 255.0
    np.testing.assert_array_equal(fit_universal_patch(model, train_batches, spec).numpy(), first.numpy())
    rebatched = train_batches.unbatch().batch(3)  # the spec's batch size decides, not the pipeline's
    np.testing.assert_array_equal(fit_universal_patch(model, rebatched, spec).numpy(), first.numpy())
    start = patch_lib.initial_patch(spec, 16).numpy()
    np.testing.assert_array_equal(fit_universal_patch(model, train_batches, spec.replace(steps=0)).numpy(), start)
    assert 0 < np.abs(first.numpy() - start).max() <= 3 * 16.0 + 1e-3  # three signed steps of 16 px at most
    assert not np.array_equal(fit_universal_patch(model, train_batches, spec.replace(seed=1)).numpy(), first.numpy())


def test_a_fitted_patch_raises_the_objective_on_held_out_images_more_than_a_random_patch(model, train_batches,
                                                                                         held_out):
    """Over three seeds, the fitted patch beats the random patch it started from on images it was not fitted on
    (placed at their own random locations): every fitted one above every random one."""
    images, targets = held_out
    cls = objectives.make_objective("cls")
    score = lambda patch, spec: float(cls(model, patch_attack(patch, spec)(model, images, targets), targets))  # noqa: E731
    clean = float(cls(model, images, targets))
    fitted, random = [], []
    for seed in range(3):
        spec = SPEC.replace(seed=seed)
        fitted.append(score(fit_universal_patch(model, train_batches, spec), spec))
        random.append(score(patch_lib.initial_patch(spec, 16), spec))
    assert min(fitted) > max(random) > clean, (fitted, random, clean)
    assert np.mean(fitted) > 2 * np.mean(random), (fitted, random)


def test_fit_refuses_no_images_and_other_elements(model, train_batches):
    with pytest.raises(ValueError, match=r"the training batches hold no image"):
        fit_universal_patch(model, train_batches.take(0), SPEC)
    with pytest.raises(TypeError, match=r"batches must yield \(images \[B, H, W, 3\], \{'boxes', 'labels', \.\.\.\}\)"):
        fit_universal_patch(model, train_batches.map(lambda x, t: x), SPEC)


# -- the spec --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"size": 0.0}, r"patch size is the patch side as a fraction of the image side and must lie in \(0, 1\], "
                        r"e.g. size=0.15; got 0"),
        ({"size": 1.5}, r"patch size is the patch side as a fraction of the image side and must lie in \(0, 1\], "
                        r"e.g. size=0.15; got 1.5"),
        ({"size": "big"}, r"patch size must be a number, e.g. size=0.15; got 'big'"),
        ({"steps": -1}, r"patch steps must be >= 0 \(0 = the initial random patch\), e.g. steps=100; got -1"),
        ({"steps": 2.5}, r"patch steps must be a whole number, e.g. steps=100; got 2.5"),
        ({"step_size": 0}, r"patch step_size is a signed-gradient step in pixels and must be > 0, e.g. "
                           r"step_size=4.0; got 0"),
        ({"step_size": float("nan")}, r"patch step_size must be a finite number, e.g. step_size=4.0"),
        ({"batch_size": 0}, r"patch batch_size must be >= 1, e.g. batch_size=8; got 0"),
        ({"seed": None}, r"patch seed must be a number, e.g. seed=0; got None"),
        ({"objective": "dag"}, r"patch objective 'dag' is not one of \('cls', 'loc', 'con', 'cwa'\), e.g. "
                               r"objective='cls'"),
        ({"placement": "corner"}, r"patch placement 'corner' is not one of \('random', 'center'\), e.g. "
                                  r"placement='random'"),
    ],
)
def test_bad_specs_are_refused_naming_the_field_and_a_valid_value(settings, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        PatchSpec(**settings)


def test_the_spec_round_trips_and_normalises_its_types():
    spec = PatchSpec(size=0.2, steps=5.0, step_size=2, objective="cwa", placement="center", seed="3", batch_size=4)
    assert type(spec.steps) is int and type(spec.step_size) is float and spec.seed == 3
    record = json.loads(json.dumps(spec.to_dict()))  # what a results file stores
    assert record == {"size": 0.2, "steps": 5, "step_size": 2.0, "objective": "cwa", "placement": "center",
                      "seed": 3, "batch_size": 4}
    assert PatchSpec.from_dict(record) == spec and PatchSpec.from_dict(ConfigDict(record)) == spec
    assert set(PatchSpec.keys()) == set(PatchSpec().to_dict())
    with pytest.raises(ValueError, match=r"^config.eval.patch has unknown key\(s\) \['side'\]; accepted keys: "
                                         r"\['size', 'steps'"):
        PatchSpec.from_dict({"side": 0.1}, where="config.eval.patch")
    with pytest.raises(ValueError, match="placement"):
        spec.replace(placement="anywhere")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.size = 0.5
    sides = PatchSpec(size=0.15).side(300, 300), PatchSpec(size=0.15).side(64, 96), PatchSpec(size=0.001).side(64, 64)
    assert sides == (45, 10, 1)  # of the shorter side, rounded, at least one pixel


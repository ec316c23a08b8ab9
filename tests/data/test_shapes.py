"""Tests of the synthetic shapes dataset: contract, determinism, annotations that match the drawing."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.data.shapes import SHAPES_CLASSES, render_shapes, shapes_dataset, shapes_example

SIZE = 48


def _examples(dataset):
    return list(dataset.as_numpy_iterator())


_RENDERERS = {}


def _render(seed_pair, size=SIZE, max_objects=6):
    """render_shapes as numpy, through one traced function per configuration (eager per-op calls are slow)."""
    if (size, max_objects) not in _RENDERERS:
        _RENDERERS[size, max_objects] = tf.function(lambda seed: render_shapes(seed, size, max_objects=max_objects))
    drawn = _RENDERERS[size, max_objects](tf.constant(seed_pair, tf.int64))
    return {k: v.numpy() for k, v in drawn.items()}


def test_example_contract():
    examples = _examples(shapes_dataset(12, SIZE, seed=3, max_objects=5))
    assert len(examples) == 12
    ids = set()
    for ex in examples:
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (SIZE, SIZE, 3)
        n = ex["labels"].shape[0]
        assert 1 <= n <= 5
        assert ex["boxes"].dtype == np.float32 and ex["boxes"].shape == (n, 4)
        assert ex["labels"].dtype == np.int32 and np.all((ex["labels"] >= 0) & (ex["labels"] < len(SHAPES_CLASSES)))
        assert ex["difficult"].dtype == bool and ex["difficult"].shape == (n,) and not ex["difficult"].any()
        assert ex["original_size"].tolist() == [SIZE, SIZE]
        boxes = ex["boxes"]
        assert np.all(boxes >= 0.0) and np.all(boxes <= 1.0)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        # Boxes lie on the pixel grid, so they coincide with pixel boundaries of the drawing.
        np.testing.assert_allclose(boxes * SIZE, np.round(boxes * SIZE), atol=1e-4)
        ids.add(ex["image_id"])
    assert len(ids) == 12
    assert SHAPES_CLASSES == ("circle", "square", "triangle", "ring", "cross", "diamond")


def test_same_seed_same_data_and_order_independent():
    first = _examples(shapes_dataset(6, SIZE, seed=11))
    second = _examples(shapes_dataset(6, SIZE, seed=11, num_parallel_calls=1))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
    # Example i is a function of (seed, i) only: generating it alone gives the same result.
    alone = {k: v.numpy() for k, v in shapes_example(tf.constant(4, tf.int64), SIZE, 11).items()}
    np.testing.assert_array_equal(alone["image"], first[4]["image"])
    np.testing.assert_array_equal(alone["boxes"], first[4]["boxes"])


def test_different_seed_or_index_gives_different_images():
    a = _examples(shapes_dataset(3, SIZE, seed=1))
    b = _examples(shapes_dataset(3, SIZE, seed=2))
    for x, y in zip(a, b):
        assert np.mean(np.abs(x["image"].astype(np.float32) - y["image"].astype(np.float32))) > 5.0
    assert np.mean(np.abs(a[0]["image"].astype(np.float32) - a[1]["image"].astype(np.float32))) > 5.0


def test_boxes_match_drawn_objects_and_occlusion_rule():
    dropped = 0
    kept_total = 0
    for i in range(40):
        drawn = _render([5, i], max_objects=6)
        masks, owner, kept, visible = drawn["object_masks"], drawn["owner"], drawn["kept"], drawn["visible_fraction"]
        # The returned boxes are those of the kept slots, in drawing order.
        assert drawn["boxes"].shape[0] == kept.sum() >= 1
        kept_slots = np.flatnonzero(kept)
        for box, slot in zip(drawn["boxes"], kept_slots):
            x0, y0, x1, y1 = np.round(box * SIZE).astype(int)
            ys, xs = np.nonzero(masks[slot])
            # The full shape is tight in its box (touches every side, within one pixel) ...
            assert xs.min() >= x0 and xs.max() <= x1 - 1 and ys.min() >= y0 and ys.max() <= y1 - 1
            assert xs.min() - x0 <= 1 and (x1 - 1) - xs.max() <= 1
            assert ys.min() - y0 <= 1 and (y1 - 1) - ys.max() <= 1
            # ... and the visible part (what the image shows for this object) lies inside the box.
            vy, vx = np.nonzero(owner == slot + 1)
            assert vx.size > 0 and vx.min() >= x0 and vx.max() < x1 and vy.min() >= y0 and vy.max() < y1
            assert visible[slot] >= 0.4
        active = masks.reshape(masks.shape[0], -1).any(axis=1)
        for slot in np.flatnonzero(active & ~kept):
            assert visible[slot] < 0.4
            dropped += 1
        kept_total += kept.sum()
        # Occlusion order: a pixel shows the last object drawn there.
        for slot in range(masks.shape[0]):
            later = masks[slot + 1 :].any(axis=0) if slot + 1 < masks.shape[0] else np.zeros_like(owner, bool)
            np.testing.assert_array_equal(owner == slot + 1, masks[slot] & ~later)
    assert dropped > 0, "40 images with up to 6 objects should contain some heavily occluded objects"
    assert kept_total > 40


def test_each_class_draws_its_shape():
    """Fill ratio of a shape in its box identifies the class (square 1, circle pi/4, diamond/triangle 1/2...)."""
    expected = {
        "circle": np.pi / 4,
        "square": 1.0,
        "triangle": 0.5,
        "ring": np.pi / 4 * (1 - 0.55**2),
        "cross": 2 * 0.34 - 0.34**2,
        "diamond": 0.5,
    }
    ratios = {name: [] for name in SHAPES_CLASSES}
    for i in range(60):
        drawn = _render([9, i], size=96)
        masks, kept = drawn["object_masks"], drawn["kept"]
        for box, label, slot in zip(drawn["boxes"], drawn["labels"], np.flatnonzero(kept)):
            x0, y0, x1, y1 = np.round(box * 96).astype(int)
            if min(x1 - x0, y1 - y0) >= 24:  # large enough for the pixel grid not to matter
                ratios[SHAPES_CLASSES[label]].append(masks[slot].sum() / ((x1 - x0) * (y1 - y0)))
    for name, values in ratios.items():
        assert values, f"no large {name} in 60 images"
        assert abs(np.mean(values) - expected[name]) < 0.05, (name, np.mean(values))


def test_colour_alone_does_not_identify_the_class():
    """Nearest-centroid classification of objects by their mean visible colour stays far from perfect."""
    colours, labels = [], []
    for i in range(120):
        drawn = _render([13, i], size=40)
        image, owner = drawn["image"].astype(np.float32), drawn["owner"]
        for label, slot in zip(drawn["labels"], np.flatnonzero(drawn["kept"])):
            colours.append(image[owner == slot + 1].mean(axis=0))
            labels.append(label)
    colours, labels = np.array(colours), np.array(labels)
    assert len(set(labels.tolist())) == len(SHAPES_CLASSES)
    centroids = np.stack([colours[labels == c].mean(axis=0) for c in range(len(SHAPES_CLASSES))])
    predicted = np.argmin(((colours[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = np.mean(predicted == labels)
    print(f"colour-only nearest-centroid accuracy: {accuracy:.3f} (chance {1 / len(SHAPES_CLASSES):.3f})")
    assert accuracy < 0.5, accuracy


def test_num_classes_and_max_objects_are_respected():
    for ex in _examples(shapes_dataset(20, 32, seed=0, num_classes=2, max_objects=2)):
        assert set(ex["labels"].tolist()) <= {0, 1}
        assert 1 <= ex["labels"].shape[0] <= 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_images=4, image_size=8), "image_size"),
        (dict(num_images=4, image_size=32, num_classes=7), "num_classes"),
        (dict(num_images=4, image_size=32, max_objects=0), "max_objects"),
        (dict(num_images=-1, image_size=32), "num_images"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        shapes_dataset(**kwargs)


def test_object_sizes_span_small_to_large():
    sides = []
    for i in range(60):
        drawn = _render([21, i], size=100)
        masks = drawn["object_masks"]
        for slot in range(masks.shape[0]):
            ys, xs = np.nonzero(masks[slot])
            if xs.size:
                sides.append(np.sqrt((np.ptp(xs) + 1) * (np.ptp(ys) + 1)) / 100.0)
    sides = np.array(sides)
    assert sides.min() < 0.11 and sides.max() > 0.6
    assert 0.15 < np.median(sides) < 0.35  # log-uniform between 0.08 and 0.7: median ~0.24

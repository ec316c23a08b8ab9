"""Shared test fixtures: a tiny SSD configuration of the same structure as SSD300."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

TINY_SSD = dict(
    num_classes=4,
    image_size=64,
    width=1 / 16,
    extras=((256, 1, 1, 0), (512, 3, 2, 1)),
    min_sizes=(8, 20, 38),
    max_sizes=(20, 38, 56),
    aspect_ratios=((2,), (2, 3), (2,)),
    steps=None,
)


@pytest.fixture
def tiny_ssd_config() -> dict:
    """Constructor arguments of a tiny SSD (64×64 input, 3 sources, channels /16)."""
    return dict(TINY_SSD)


TRAINED_CLASS_NAMES = ("red", "green", "blue")


@pytest.fixture(scope="session")
def trained_ssd():
    """``(model, batches)``: a tiny SSD trained for 40 Adam steps on 8 coloured rectangles (so mAP, confidences and
    gradients are not trivially zero), and the same images as two evaluation batches of 4."""
    import keras

    from robustdet_tf.models.ssd import SSD
    from tests.helpers import evaluation_batches, rectangles, train_on_detection_loss

    num_images, size = 8, 64
    keras.utils.set_random_seed(0)
    images, targets = rectangles(num_images, size, seed=0, max_boxes=2)
    model = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)
    train_on_detection_loss(model, images, targets, steps=40)
    return model, evaluation_batches(images, targets)

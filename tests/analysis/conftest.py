"""A tiny SSD trained a little on coloured rectangles (so mAP and confidences are not trivially zero), and its
evaluation batches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles, train_on_detection_loss

CLASS_NAMES = ("red", "green", "blue")
NUM_IMAGES, SIZE = 8, 64


@pytest.fixture(scope="session")
def trained_ssd():
    """``(model, batches)``: 40 Adam steps on 8 rectangles; the same images as two evaluation batches of 4."""
    keras.utils.set_random_seed(0)
    images, targets = rectangles(NUM_IMAGES, SIZE, seed=0, max_boxes=2)
    model = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)
    train_on_detection_loss(model, images, targets, steps=40)
    eval_targets = {**targets, "difficult": np.zeros_like(targets["labels"], bool),
                    "image_id": np.array([f"rect_{i}" for i in range(NUM_IMAGES)]),
                    "original_size": np.full((NUM_IMAGES, 2), SIZE, np.int32)}
    return model, tf.data.Dataset.from_tensor_slices((images, eval_targets)).batch(4)

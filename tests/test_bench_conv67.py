"""bench/conv67_start.py's surrogate: a trunk scaled by c computes c times the same features (the README's claim);
the subsampled-fc arm has conv6/conv7's shapes (the PyTorch-start arm is backbone.default_conv67, tested with the
VGG16 files)."""

import importlib.util
import os

import keras
import numpy as np

from robustdet_tf.importers import backbone
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "conv67_start.py")


def _bench():
    spec = importlib.util.spec_from_file_location("conv67_start", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_scaled_trunk_computes_the_same_features_scaled_and_the_fc_arm_has_the_layers_shapes():
    bench = _bench()
    keras.utils.set_random_seed(3)
    model = SSD(**TINY_SSD)
    model.build()
    convs = model.detector.all_convs()
    for name in bench.TRUNK_13:  # non-zero biases, so a missed bias would show
        convs[name].bias.assign(np.random.default_rng(0).uniform(0.0, 0.1, convs[name].bias.shape))
    size = TINY_SSD["image_size"]
    images = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    before = model.detector(model.preprocess(images), return_features=True)["features"]["vgg_29"].numpy()
    arrays = {name: (convs[name].kernel.numpy(), convs[name].bias.numpy()) for name in bench.TRUNK_13}
    backbone.load_trunk(model, bench.scaled_trunk(arrays, 10.0), "scaled")
    after = model.detector(model.preprocess(images), return_features=True)["features"]["vgg_29"].numpy()
    assert np.abs(before).max() > 0
    np.testing.assert_allclose(after, 10.0 * before, rtol=1e-4, atol=1e-4 * np.abs(after).max())
    fc = bench.fc_subsampled(64, 128, np.random.default_rng(2))
    assert fc[backbone.CONV6][0].shape == (3, 3, 64, 128) and fc[backbone.CONV7][0].shape == (1, 1, 128, 128)

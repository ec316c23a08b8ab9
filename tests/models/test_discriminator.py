"""Tests of the AID (ResNet-18 + K-way softmax): sizes, padding, parameter count, weight names, serialisation."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.models.discriminator import PaddedMaxPool2D, build_discriminator, torchvision_weight_map
from tests.helpers import assert_keras_round_trip
from tests.importers.official_reference import resnet18_state_shapes


def _torch_to_keras_shape(shape):
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    return tuple(reversed(shape))


def test_full_width_parameter_count():
    model = build_discriminator(num_kernels=4)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert trainable == 11_176_512 + 2_052 == 11_178_564
    # Spec's 9,620 "BN running-stat values" = 2 x 4,800 channels + 20 PyTorch num_batches_tracked counters,
    # which Keras does not have.
    assert frozen == 9_620 - 20


def test_full_width_shapes_on_300px():
    """docs/reference.md#the-aid: 3x300² -> 64x150² -> 64x75² -> 128x38² -> 256x19² -> 512x10² -> 512 -> K."""
    model = build_discriminator(num_kernels=4)
    names = ["relu", "maxpool", "layer1_1_out", "layer2_1_out", "layer3_1_out", "layer4_1_out", "avgpool"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    outputs = probe(np.zeros((1, 300, 300, 3), np.float32), training=False)
    got = [tuple(o.shape[1:]) for o in outputs]
    assert got == [
        (150, 150, 64),
        (75, 75, 64),
        (75, 75, 64),
        (38, 38, 128),
        (19, 19, 256),
        (10, 10, 512),
        (512,),
        (4,),
    ]


def test_output_is_a_softmax_and_train_mode_uses_batch_statistics():
    keras.utils.set_random_seed(0)  # its weights must not depend on which tests ran before (a saturated draw: pi = 0)
    model = build_discriminator(num_kernels=3, base_width=4)
    x = np.random.default_rng(0).uniform(-123, 151, (4, 40, 40, 3)).astype(np.float32)
    pi_eval = model(x, training=False).numpy()
    pi_train = model(x, training=True).numpy()
    assert pi_eval.shape == (4, 3)
    for pi in (pi_eval, pi_train):
        assert (pi > 0).all()
        np.testing.assert_allclose(pi.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(pi_eval - pi_train).max() > 1e-6
    assert np.abs(pi_eval[0] - pi_eval[1]).max() > 0  # depends on the image


def test_stem_uses_symmetric_pytorch_padding():
    model = build_discriminator(num_kernels=2, base_width=4)
    x = np.random.default_rng(1).standard_normal((1, 30, 30, 3)).astype(np.float32)
    kernel = model.get_layer("conv1").kernel
    got = keras.Model(model.input, model.get_layer("conv1").output)(x).numpy()
    want = tf.nn.conv2d(x, kernel, 2, padding=[[0, 0], [3, 3], [3, 3], [0, 0]]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    tf_same = tf.nn.conv2d(x, kernel, 2, padding="SAME").numpy()
    assert np.abs(tf_same - want).max() > 1e-3  # 'same' would be wrong here (pads 2 top/left, 3 bottom/right)


def test_padded_max_pool_pads_with_minus_infinity():
    x = -1.0 - np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)  # all negative: zero padding would win
    got = PaddedMaxPool2D(3, 2, 1)(x).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(got, [[-1.0, -2.0], [-5.0, -6.0]])


def test_torchvision_keys_map_to_every_weight_with_converted_shapes():
    model = build_discriminator(num_kernels=4, base_width=8)
    mapping = torchvision_weight_map(model, prefix="disc.base_net.")
    want = resnet18_state_shapes(width=8, prefix="disc.base_net.")
    assert set(mapping) == set(want)
    assert len({id(v) for v in mapping.values()}) == len(model.weights)
    for key, variable in mapping.items():
        assert tuple(variable.shape) == _torch_to_keras_shape(want[key]), key
    assert (
        mapping["disc.base_net.layer2.0.downsample.1.running_var"]
        is model.get_layer("layer2_0_downsample_1").moving_variance
    )


def test_keras_file_round_trip(tmp_path):
    model = build_discriminator(num_kernels=3, base_width=4)
    x = np.random.default_rng(2).uniform(-100, 100, (2, 33, 33, 3)).astype(np.float32)
    model(x, training=True)  # move the BN running statistics away from their init
    loaded = assert_keras_round_trip(model, x, tmp_path, call_kwargs={"training": False})
    assert isinstance(loaded.get_layer("maxpool"), PaddedMaxPool2D)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_kernels"):
        build_discriminator(num_kernels=0)

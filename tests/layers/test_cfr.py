"""Tests of the CFR pieces: the probabilistic AAconv (ProbConv) and the layer-21 image decoder."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.layers.aaconv import AAConv2D
from robustdet_tf.layers.cfr import LOGVAR_MAX, CFRDecoder, ProbConv, probconv_init_gain
from tests.helpers import assert_keras_round_trip

# ---------------------------------------------------------------------------------------------------- ProbConv


def _prob_inputs(batch=2, size=8, cin=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, cin)).astype(np.float32)
    pi = tf.nn.softmax(rng.standard_normal((batch, 4))).numpy().astype(np.float32)
    return x, pi


def _randomise(layer, seed=0):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if w.trainable:
            w.assign(rng.uniform(-0.3, 0.3, w.shape).astype(np.float32))


def test_probconv_inference_returns_mu_and_clipped_logvar():
    x, pi = _prob_inputs()
    layer = ProbConv(6, 3, implementation="map_fn")
    layer([x, pi])
    _randomise(layer)
    layer.conv_std.bias.assign(np.full((4, 6), 9.0, np.float32))  # push part of logvar above the clip
    out, mu, logvar = (t.numpy() for t in layer([x, pi], training=False))
    raw_std = layer.conv_std([x, pi]).numpy()
    np.testing.assert_allclose(mu, layer.conv_mean([x, pi]).numpy(), atol=1e-6)
    np.testing.assert_array_equal(out, mu)
    np.testing.assert_allclose(logvar, np.minimum(raw_std, LOGVAR_MAX), atol=1e-6)
    assert (raw_std > LOGVAR_MAX).any() and logvar.max() == LOGVAR_MAX and (raw_std < LOGVAR_MAX).any()


def test_probconv_training_samples_reparameterised_noise():
    x, pi = _prob_inputs(batch=4, size=12)
    layer = ProbConv(32, 3, implementation="stacked", seed=3)
    layer([x, pi])
    _randomise(layer)
    z, mu, logvar = (t.numpy() for t in layer([x, pi], training=True))
    eps = (z - mu) / np.exp(0.5 * logvar)
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1.0) < 0.05  # 4*10*10*32 = 12,800 draws of N(0, 1)
    z_again = layer([x, pi], training=True)[0].numpy()
    assert np.abs(z_again - z).max() > 0.1  # fresh noise on every call

    twin = ProbConv(32, 3, implementation="stacked", seed=3)
    twin([x, pi])
    twin.set_weights(layer.get_weights()[:4] + twin.get_weights()[4:])  # same convs, fresh seed state
    np.testing.assert_allclose(twin([x, pi], training=True)[0].numpy(), z, atol=1e-6)  # seedable


def test_probconv_noise_is_graph_safe():
    x, pi = _prob_inputs()
    layer = ProbConv(4, 3, implementation="map_fn", seed=0)
    layer([x, pi])
    step = tf.function(lambda x, pi: layer([x, pi], training=True)[0])
    first, second = step(x, pi).numpy(), step(x, pi).numpy()
    assert np.abs(first - second).max() > 1e-3  # the seed state advances inside the graph


def test_probconv_initial_weights_follow_reference():
    """docs/reference.md#expanding-a-clean-ssd: 5-D Xavier bound 0.0015885 for [4, 512, 512, 3, 3], zero bias; std
    starts ~ 1."""
    layer = ProbConv(512, 3, num_kernels=4, cfr_layer=21)
    layer.build([(None, None, None, 512), (None, 4)])
    for conv in (layer.conv_std, layer.conv_mean):
        kernel = np.abs(conv.kernel.numpy())
        assert kernel.shape == (4, 3, 3, 512, 512)
        assert 0.0015880 < kernel.max() <= 0.0015886
        assert not conv.bias.numpy().any()
    assert probconv_init_gain(14) == 1 / 256 and probconv_init_gain(21) == 1.0
    small = ProbConv(6, 3, cfr_layer=7)
    small.build([(None, None, None, 5), (None, 4)])
    bound = math.sqrt(6 / (6 * 5 * 9 + 4 * 5 * 9)) / 256
    assert 0.9 * bound < np.abs(small.conv_std.kernel.numpy()).max() <= bound


def test_probconv_keras_file_round_trip(tmp_path):
    layer = ProbConv(5, 3, strides=2, implementation="map_fn", seed=7, name="cfr")
    x, pi = _prob_inputs(size=9)
    layer([x, pi])
    _randomise(layer)
    loaded = assert_keras_round_trip(layer, [x, pi], tmp_path, call_kwargs={"training": False})  # out, mu, logvar
    assert isinstance(loaded.conv_std, AAConv2D) and loaded.get_config()["seed"] == 7


# ----------------------------------------------------------------------------------------------------- decoder


def test_decoder_full_size_parameter_count_and_shapes():
    """docs/reference.md#cfr and #parameter-counts: 512x38² -> ... -> 3x300², 4,705,347 parameters (+2,888 BN
    running statistics)."""
    decoder = CFRDecoder()
    shape = (None, 38, 38, 512)
    decoder.build(shape)
    trainable = sum(int(np.prod(w.shape)) for w in decoder.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in decoder.non_trainable_weights)
    assert trainable == 4_705_347
    assert frozen == 2_888 - 8  # the spec's 2,888 counts PyTorch's 8 num_batches_tracked scalars too
    conv_shapes = []
    for layer in decoder.decoder_layers:
        shape = tuple(layer.compute_output_shape(shape))
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            conv_shapes.append(shape[1:])
    assert conv_shapes == [
        (38, 38, 512),
        (78, 78, 256),
        (76, 76, 256),
        (154, 154, 128),
        (152, 152, 128),
        (150, 150, 64),
        (150, 150, 64),
        (302, 302, 32),
        (300, 300, 3),
    ]


def test_decoder_forward_range_and_train_mode():
    decoder = CFRDecoder(width=16)
    z = np.random.default_rng(0).standard_normal((2, 38, 38, 8)).astype(np.float32) * 50
    image = decoder(z, training=False).numpy()
    assert image.shape == (2, 300, 300, 3)
    assert np.abs(image).max() < 160 and np.abs(image).max() > 1
    assert np.abs(decoder(z, training=True).numpy() - image).max() > 1e-3  # BN on batch statistics
    assert decoder.decoder_layers[2](tf.constant([-1.0, 2.0])).numpy() == pytest.approx([-0.01, 2.0])


def test_decoder_initialisation_matches_pytorch():
    decoder = CFRDecoder(width=64)
    decoder.build((None, 38, 38, 64))
    by_name = {layer.name: layer for layer in decoder.decoder_layers}
    conv, up = by_name["decoder_0"], by_name["decoder_3"]  # Conv 64->64, ConvT 64->32
    xavier = math.sqrt(6 / (9 * 64 + 9 * 64))
    assert 0.95 * xavier < np.abs(conv.kernel.numpy()).max() <= xavier and not conv.bias.numpy().any()
    torch_default = 1 / math.sqrt(32 * 9)
    assert 0.95 * torch_default < np.abs(up.kernel.numpy()).max() <= torch_default
    assert 0.5 * torch_default < np.abs(up.bias.numpy()).max() <= torch_default


def _torch_conv_transpose(x, weight, bias, stride=2, output_padding=1):
    """PyTorch ConvTranspose2d(padding=0) by scatter-add, weight in PyTorch layout [in, out, kh, kw]."""
    batch, height, width, _ = x.shape
    k = weight.shape[2]
    out_h, out_w = (height - 1) * stride + k + output_padding, (width - 1) * stride + k + output_padding
    out = np.zeros((batch, out_h, out_w, weight.shape[1]))
    for i in range(height):
        for j in range(width):
            out[:, i * stride : i * stride + k, j * stride : j * stride + k, :] += np.einsum(
                "bc,coyx->byxo", x[:, i, j, :], weight
            )
    return out + bias


def test_conv_transpose_matches_pytorch_and_last_row_column_are_bias_only():
    decoder = CFRDecoder(width=16)
    decoder.build((None, 5, 5, 16))
    up = decoder.decoder_layers[3]  # ConvT 16 -> 8
    _randomise(up, seed=4)
    x = np.random.default_rng(5).standard_normal((2, 5, 5, 16)).astype(np.float32)
    got = up(x).numpy()
    torch_weight = np.transpose(up.kernel.numpy(), (3, 2, 0, 1))  # Keras [kh, kw, out, in] -> [in, out, kh, kw]
    want = _torch_conv_transpose(x, torch_weight, up.bias.numpy())
    assert got.shape == want.shape == (2, 12, 12, 8)
    np.testing.assert_allclose(got, want, atol=1e-5)
    bias = np.broadcast_to(up.bias.numpy(), (2, 12, 8))
    np.testing.assert_allclose(got[:, -1, :, :], bias, atol=1e-6)
    np.testing.assert_allclose(got[:, :, -1, :], bias, atol=1e-6)
    assert np.abs(got[:, 0, :-1, :] - bias[:, :-1]).max() > 1e-3  # the first row does get input


def test_decoder_keras_file_round_trip(tmp_path):
    decoder = CFRDecoder(width=16, name="decoder")
    z = np.random.default_rng(6).standard_normal((1, 38, 38, 16)).astype(np.float32)
    decoder(z, training=True)  # move the BN running statistics away from their init
    loaded = assert_keras_round_trip(decoder, z, tmp_path, atol=1e-4, call_kwargs={"training": False})
    assert loaded.width == 16
    with pytest.raises(ValueError, match="multiple of 16"):
        CFRDecoder(width=20)

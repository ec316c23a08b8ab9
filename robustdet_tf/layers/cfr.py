"""Consistent Features with Reconstruction (CFR), docs/reference.md#cfr: the probabilistic conv4_3 and its image
decoder.

RobustDet* turns conv4_3 (VGG index 21) into a variational layer: a mean and a log-variance AAconv, a sample
``z = mu + exp(logvar / 2) * eps`` during training, and a decoder that reconstructs the (mean-subtracted) input
image from ``z``. The KL and reconstruction terms push adversarial features towards the clean feature
distribution. At inference (and inside every attack iteration, which runs with ``training=False``) the layer
returns ``mu`` and the decoder is not run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from robustdet_tf.distribution import replica_seed
from robustdet_tf.layers.aaconv import AAConv2D, DynamicXavierUniform
from robustdet_tf.layers.global_batch_norm import GlobalBatchNormalization

LOGVAR_MAX = 10.0  # the reference clips the log-variance from above only
DECODER_OUTPUT_SCALE = 160.0  # tanh * 160: the range of mean-subtracted pixels


def probconv_init_gain(cfr_layer: int = 21) -> float:
    """Xavier gain the reference's ``weights_init`` gives a ProbConv: 1 after VGG index 14, 1/256 up to it."""
    return 1.0 if cfr_layer > 14 else 1.0 / 256.0


def probconv_initializer(cfr_layer: int = 21) -> DynamicXavierUniform:
    """Kernel initializer of both ProbConv convolutions (docs/reference.md#expanding-a-clean-ssd: 5-D Xavier with
    PyTorch's fans, zero bias).

    For the 512->512 3x3 conv with K=4 its bound is 0.0015885, so ``conv_std`` starts near 0: logvar ~ 0, std ~ 1.
    """
    return DynamicXavierUniform(gain=probconv_init_gain(cfr_layer))


@keras.saving.register_keras_serializable(package="robustdet_tf")
class ProbConv(keras.layers.Layer):
    """Probabilistic AAconv (the reference's ``ProbConv2d``): ``layer([x, pi], training)`` -> (out, mu, logvar).

    ``out`` is the sample ``z`` when training, ``mu`` otherwise. ``mu`` comes from ``conv_mean`` (the original
    conv4_3, where the clean SSD's weights go), ``logvar = min(conv_std(x, pi), 10)`` from an independent
    AAconv of the same shape. Noise comes from a Keras ``SeedGenerator`` (seedable, graph-safe; a new draw on
    every call). Both convs start with ``probconv_initializer(cfr_layer)`` and zero bias, as in the reference.
    Padding is 'valid' as for every AAconv: pad the input first.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        dilation_rate: int | Sequence[int] = 1,
        num_kernels: int = 4,
        implementation: str = "auto",
        cfr_layer: int = 21,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.cfr_layer = int(cfr_layer)
        self.seed = seed
        conv_args = dict(
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            num_kernels=num_kernels,
            implementation=implementation,
            kernel_initializer=probconv_initializer(cfr_layer),
            bias_initializer="zeros",
        )
        self.conv_mean = AAConv2D(name="conv_mean", **conv_args)
        self.conv_std = AAConv2D(name="conv_std", **conv_args)
        self.seed_generator = keras.random.SeedGenerator(seed, name="noise_seed")

    def build(self, input_shape) -> None:
        self.conv_mean.build(input_shape)
        self.conv_std.build(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape) -> tuple:
        shape = self.conv_mean.compute_output_shape(input_shape)
        return shape, shape, shape

    def call(self, inputs, training=None):
        mu = self.conv_mean(inputs)
        logvar = tf.minimum(self.conv_std(inputs), LOGVAR_MAX)
        if not training:
            return mu, mu, logvar
        eps = tf.random.stateless_normal(tf.shape(mu), replica_seed(self.seed_generator), dtype=mu.dtype)
        return mu + tf.exp(0.5 * logvar) * eps, mu, logvar

    def get_config(self) -> dict:
        config = super().get_config()
        mean = self.conv_mean
        config.update(
            filters=mean.filters,
            kernel_size=mean.kernel_size,
            strides=mean.strides,
            dilation_rate=mean.dilation_rate,
            num_kernels=mean.num_kernels,
            implementation=mean.implementation,
            cfr_layer=self.cfr_layer,
            seed=self.seed,
        )
        return config


def _xavier_conv(filters: int, padding: str, name: str) -> keras.layers.Conv2D:
    """Decoder Conv2d: Xavier-uniform weights (Keras' Glorot fans equal PyTorch's for 4-D kernels), zero bias."""
    return keras.layers.Conv2D(
        filters, 3, padding=padding, kernel_initializer="glorot_uniform", bias_initializer="zeros", name=name
    )


def _torch_default_conv_transpose(filters: int, name: str) -> keras.layers.Conv2DTranspose:
    """ConvTranspose2d(k3, s2, padding 0, output_padding 1) with PyTorch's default init.

    PyTorch reads fan_in of a transposed-conv weight [in, out, kh, kw] from dim 1, so fan_in = out * 9 and
    kaiming-uniform(a=sqrt 5) gives U(+-1/sqrt(fan_in)), the same bound for the bias. The extra last row and
    column that output_padding adds get no input contribution (bias only), in Keras as in PyTorch.
    """
    bound = 1.0 / math.sqrt(filters * 9)
    init = keras.initializers.RandomUniform(-bound, bound)
    return keras.layers.Conv2DTranspose(
        filters,
        3,
        strides=2,
        padding="valid",
        output_padding=1,
        kernel_initializer=init,
        bias_initializer=init,
        name=name,
    )


@keras.saving.register_keras_serializable(package="robustdet_tf")
class CFRDecoder(keras.layers.Layer):
    """Decoder of the layer-21 CFR (``decoder_large_21``): z [B, 38, 38, 512] -> image [B, 300, 300, 3].

    Output is ``160 * tanh(.)``, compared against the mean-subtracted input. ``width`` is the first conv's
    channel count (512 in the reference); the later ones are width/2, /4, /8, /16, so tests can shrink it.
    Sub-layer ``decoder_{i}`` holds the reference's ``decoder.{i}.*`` tensors (conv, BatchNorm; LeakyReLU and
    tanh have no weights).
    """

    def __init__(self, width: int = 512, **kwargs):
        super().__init__(**kwargs)
        if width < 16 or width % 16:
            raise ValueError(f"CFRDecoder {self.name}: width must be a positive multiple of 16, got {width}.")
        self.width = int(width)
        w = self.width
        plan = [  # (PyTorch module index, kind, filters): each conv is followed by BN and LeakyReLU but the last
            (0, "same", w),
            (3, "up", w // 2),
            (6, "valid", w // 2),
            (9, "up", w // 4),
            (12, "valid", w // 4),
            (15, "valid", w // 8),
            (18, "same", w // 8),
            (21, "up", w // 16),
        ]
        self.decoder_layers = []
        for index, kind, filters in plan:
            name = f"decoder_{index}"
            conv = _torch_default_conv_transpose(filters, name) if kind == "up" else _xavier_conv(filters, kind, name)
            bn = GlobalBatchNormalization(momentum=0.9, epsilon=1e-5, name=f"decoder_{index + 1}")
            self.decoder_layers += [conv, bn, keras.layers.LeakyReLU(negative_slope=0.01, name=f"decoder_{index + 2}")]
        self.decoder_layers.append(_xavier_conv(3, "valid", "decoder_24"))

    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        for layer in self.decoder_layers:
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        self.built = True

    def compute_output_shape(self, input_shape) -> tuple:
        shape = tuple(input_shape)
        for layer in self.decoder_layers:
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def call(self, z, training=None):
        x = z
        for layer in self.decoder_layers:
            x = layer(x, training=training)
        return DECODER_OUTPUT_SCALE * tf.tanh(x)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(width=self.width)
        return config

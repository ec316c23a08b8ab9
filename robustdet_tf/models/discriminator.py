"""Adversarial Image Discriminator (AID), docs/reference.md#the-aid: torchvision ResNet-18 with a K-way softmax head.

The AID looks at the detector's preprocessed input (mean-subtracted RGB, 0..255 scale; no ImageNet
normalisation, as in the reference) and outputs the mixture ``pi`` [B, K] that every AAconv of the detector uses.
Gradients flow through ``pi`` into the AID during training and attacks, so it is an ordinary differentiable model.

Layer names follow torchvision's state-dict keys with dots replaced by underscores (``layer2.0.downsample.1`` ->
``layer2_0_downsample_1``) so ImageNet weights and official RobustDet checkpoints map one to one; see
``torchvision_weight_map``.

PyTorch pads symmetrically; TF's ``'same'`` pads (2, 3) for the 7x7/2 stem on 300 px and (0, 1) for stride-2 3x3
convs on even sizes (docs/reference.md#porting-notes). So stride-2 convolutions get an explicit ``ZeroPadding2D`` and
``'valid'``;
stride-1 3x3 convolutions use ``'same'``, which is symmetric for them.
"""

from __future__ import annotations

import re

import keras
import tensorflow as tf

from robustdet_tf.layers.global_batch_norm import GlobalBatchNormalization

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5
STAGE_BLOCKS = (2, 2, 2, 2)  # ResNet-18
STAGE_STRIDES = (1, 2, 2, 2)


@keras.saving.register_keras_serializable(package="robustdet_tf")
class PaddedMaxPool2D(keras.layers.Layer):
    """Max pooling with PyTorch's symmetric ``padding`` filled with -inf (padded cells never win)."""

    def __init__(self, pool_size: int = 3, strides: int = 2, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.pool_size, self.strides, self.padding = int(pool_size), int(strides), int(padding)

    def call(self, x):
        p = self.padding
        x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=float("-inf"))
        return tf.nn.max_pool2d(x, self.pool_size, self.strides, "VALID")

    def compute_output_shape(self, input_shape) -> tuple:
        def size(n):
            return None if n is None else (n + 2 * self.padding - self.pool_size) // self.strides + 1

        return (input_shape[0], size(input_shape[1]), size(input_shape[2]), input_shape[3])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package="robustdet_tf")
class PerImageDense(keras.layers.Dense):
    """``Dense`` on ``[B, features]`` computed image by image (``[1, in] @ [in, out]`` per image).

    One ``[B, in] @ [in, out]`` GEMM gives last bits that depend on B, so an image's mixture ``pi`` would differ
    in the last bit between one device and N replicas (see ``layers.aaconv.mix_per_image``).  Same weights, names
    and config as ``Dense``; 2-D inputs only, no LoRA.
    """

    def call(self, inputs, training=None):
        y = tf.matmul(inputs[:, None, :], tf.cast(self.kernel, inputs.dtype))[:, 0, :]
        if self.use_bias:
            y = y + tf.cast(self.bias, inputs.dtype)
        return self.activation(y) if self.activation is not None else y


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    """Global-batch statistics, so the AID trains alike on one device and on N replicas."""
    return GlobalBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _conv(x, filters: int, kernel_size: int, stride: int, name: str):
    """Bias-free conv with PyTorch padding ``kernel_size // 2`` (explicit when strided, 'same' otherwise)."""
    pad = kernel_size // 2
    if stride == 1:
        return keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=name)(x)
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="valid", use_bias=False, name=name)(x)


def _basic_block(x, filters: int, stride: int, prefix: str):
    """torchvision BasicBlock: conv-bn-relu-conv-bn + (downsampled) identity, then relu."""
    shortcut = x
    y = _conv(x, filters, 3, stride, f"{prefix}_conv1")
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(_batch_norm(f"{prefix}_bn1")(y))
    y = _batch_norm(f"{prefix}_bn2")(_conv(y, filters, 3, 1, f"{prefix}_conv2"))
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{prefix}_downsample_0")
        shortcut = _batch_norm(f"{prefix}_downsample_1")(shortcut)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def build_discriminator(num_kernels: int = 4, base_width: int = 64, name: str = "aid") -> keras.Model:
    """The AID as a functional ``keras.Model``: preprocessed image [B, H, W, 3] -> ``pi`` [B, num_kernels].

    ``base_width`` 64 is ResNet-18; smaller values give narrow copies for tests (stages are 1, 2, 4, 8 times it).
    Stage outputs are the layers ``layer{1..4}_1_out``; the pooled 512-d feature is ``avgpool``.
    """
    if num_kernels < 1 or base_width < 1:
        raise ValueError(
            f"build_discriminator: num_kernels and base_width must be >= 1, got {num_kernels}, {base_width}."
        )
    image = keras.Input((None, None, 3), name="preprocessed_image")
    x = _conv(image, base_width, 7, 2, "conv1")
    x = keras.layers.ReLU(name="relu")(_batch_norm("bn1")(x))
    x = PaddedMaxPool2D(3, 2, 1, name="maxpool")(x)
    for stage, (blocks, stride) in enumerate(zip(STAGE_BLOCKS, STAGE_STRIDES), start=1):
        for block in range(blocks):
            x = _basic_block(x, base_width * 2 ** (stage - 1), stride if block == 0 else 1, f"layer{stage}_{block}")
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    x = PerImageDense(num_kernels, name="fc", **_torch_linear_init(x.shape[-1]))(x)
    pi = keras.layers.Softmax(name="softmax")(x)
    return keras.Model(image, pi, name=name)


def _torch_linear_init(fan_in: int) -> dict:
    """PyTorch's default ``nn.Linear`` init, U(+-1/sqrt(fan_in)) for weight and bias (the AID's fresh fc)."""
    bound = fan_in**-0.5
    init = keras.initializers.RandomUniform(-bound, bound)
    return {"kernel_initializer": init, "bias_initializer": init}


_KERAS_TO_TORCH_PARAM = {
    "kernel": "weight",
    "gamma": "weight",
    "bias": "bias",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def torch_key(layer_name: str, variable_name: str) -> str:
    """torchvision state-dict key of a Keras weight: ``("layer2_0_downsample_1", "gamma")`` ->
    ``"layer2.0.downsample.1.weight"``."""
    module = re.sub(r"^(layer\d)_(\d)_(conv\d|bn\d|downsample)(?:_(\d))?$", _dotted, layer_name)
    return f"{module}.{_KERAS_TO_TORCH_PARAM[variable_name]}"


def _dotted(match: re.Match) -> str:
    return ".".join(part for part in match.groups() if part is not None)


def torchvision_weight_map(model: keras.Model, prefix: str = "") -> dict[str, keras.Variable]:
    """Map every torchvision ResNet-18 state-dict key (with ``prefix``, e.g. ``"disc.base_net."``) to its
    Keras variable. ``num_batches_tracked`` has no Keras counterpart and is absent.

    Layouts differ (docs/reference.md#porting-notes): conv ``[out, in, kh, kw]`` -> ``[kh, kw, in, out]``
    (transpose 2, 3, 1, 0);
    fc ``[out, in]`` -> ``[in, out]``; BatchNorm vectors as they are.
    """
    mapping = {}
    for layer in model.layers:
        for variable in layer.weights:
            key = prefix + torch_key(layer.name, variable.name)
            if key in mapping:
                raise ValueError(f"torchvision_weight_map: two Keras weights map to {key} in model {model.name}.")
            mapping[key] = variable
    return mapping

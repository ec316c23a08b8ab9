"""Adversarially-aware convolution (AAconv; the reference calls it ``DynamicConv2d``), docs/reference.md#aaconv.

RobustDet replaces every convolution of SSD by a bank of K kernels. The Adversarial Image Discriminator (AID)
gives each image a mixture vector ``pi`` (softmax over K); image ``b`` is convolved with
``W_b = sum_k pi[b, k] * W_k`` and ``bias_b = sum_k pi[b, k] * bias_k``. Clean and adversarial images therefore
run through different effective detectors, which is what lets the model "disentangle" the two.

The mixture is an explicit input (``layer([x, pi])``) so no layer reads state stored by another one, and so an
attack or the ``adc`` sub-batch can pass whatever ``pi`` it needs.

Three numerically equivalent implementations exist because no single one is best everywhere:

* ``"grouped"``: fold the batch into channels and run one grouped convolution with ``groups = B`` (what the
  reference does). Fast, but grouped convolutions (and their gradients) need oneDNN on CPU, cuDNN on GPU or XLA.
* ``"map_fn"``: one ordinary convolution per image inside ``tf.map_fn``. Portable; lowers to TFLite builtins.
* ``"stacked"``: convolve with all K kernels at once, then mix the K outputs with ``pi``. K times the compute,
  but only plain ops; a handy reference.
* ``"auto"``: ``"grouped"`` if a probe convolution (forward and backward) works and is correct on this machine,
  otherwise ``"map_fn"``. The probe runs once per convolution geometry and is cached.

Padding is always ``'valid'``: the detector builder pads explicitly with PyTorch's symmetric padding first
(TF's ``'same'`` pads asymmetrically for stride 2, docs/reference.md#porting-notes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

IMPLEMENTATIONS = ("auto", "grouped", "map_fn", "stacked")


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """Normalise an int or a pair to a pair of positive ints, as Keras' Conv2D does."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"AAConv2D: {what} must be a positive int or a pair of positive ints, got {value!r}.")
    return int(pair[0]), int(pair[1])


def dynamic_kernel_fans(shape: Sequence[int]) -> tuple[int, int]:
    """PyTorch's (fan_in, fan_out) of a dynamic-conv weight, given its Keras shape ``[K, kh, kw, Cin, Cout]``.

    The reference stores the weight as ``[K, Cout, Cin, kh, kw]`` and PyTorch's fan rule reads dim 1 as "in" and
    dim 0 as "out", each times the product of the remaining dims. So fan_in = Cout*Cin*kh*kw and
    fan_out = K*Cin*kh*kw: tiny Xavier bounds (docs/reference.md#expanding-a-clean-ssd). Reproduced on purpose.
    """
    if len(shape) != 5:
        raise ValueError(f"dynamic_kernel_fans expects a [K, kh, kw, Cin, Cout] shape, got {tuple(shape)}.")
    num_kernels, kh, kw, cin, cout = (int(s) for s in shape)
    receptive = cin * kh * kw
    return cout * receptive, num_kernels * receptive


def dynamic_xavier_uniform_bound(shape: Sequence[int], gain: float = 1.0) -> float:
    """Bound of PyTorch's ``xavier_uniform_`` applied to a 5-D dynamic-conv weight (Keras shape given)."""
    fan_in, fan_out = dynamic_kernel_fans(shape)
    return gain * math.sqrt(6.0 / (fan_in + fan_out))


@keras.saving.register_keras_serializable(package="robustdet_tf")
class DynamicXavierUniform(keras.initializers.Initializer):
    """Xavier-uniform for ``[K, kh, kw, Cin, Cout]`` kernels with PyTorch's 5-D fan convention.

    Used by the reference's ``weights_init`` for ProbConv layers and for from-scratch dynamic convs; Keras'
    GlorotUniform would compute different fans for a 5-D shape.
    """

    def __init__(self, gain: float = 1.0, seed: int | None = None):
        self.gain = float(gain)
        self.seed = seed

    def __call__(self, shape, dtype=None):
        bound = dynamic_xavier_uniform_bound(shape, self.gain)
        return keras.initializers.RandomUniform(-bound, bound, seed=self.seed)(shape, dtype=dtype)

    def get_config(self) -> dict:
        return {"gain": self.gain, "seed": self.seed}


def _conv_output_size(size: int | None, kernel: int, stride: int, dilation: int) -> int | None:
    """Output length of a 'valid' convolution, or None when the input length is unknown."""
    if size is None:
        return None
    return (size - dilation * (kernel - 1) - 1) // stride + 1


@functools.cache
def grouped_conv_supported(
    kernel_size: tuple[int, int], strides: tuple[int, int], dilation_rate: tuple[int, int]
) -> bool:
    """Whether a grouped ``tf.nn.conv2d`` with this geometry runs *correctly*, forward and backward, here.

    Stock TF CPU kernels run grouped convolutions forward but refuse their gradients (and dilated ones); the
    oneDNN kernels of the x86 build support both. A bad geometry can even return garbage silently in eager mode,
    so the probe compares against per-group plain convolutions instead of trusting "no exception". The probe
    runs eagerly (lifted out of any graph being traced) with the default device placement, once per geometry.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilation_rate
    groups, cin, cout = 2, 2, 3
    height, width = dh * (kh - 1) + 1 + sh, dw * (kw - 1) + 1 + sw
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((1, height, width, groups * cin)).astype(np.float32)
    k_np = rng.standard_normal((kh, kw, cin, groups * cout)).astype(np.float32)

    def conv(x, k):
        return tf.nn.conv2d(x, k, strides=(sh, sw), padding="VALID", dilations=(dh, dw))

    @tf.function(autograph=False)
    def grouped_and_reference(x, k):
        # tf.gradients, not a GradientTape: init_scope pauses tapes, and the probe may run inside a trace.
        y = conv(x, k)
        y_ref = tf.concat(
            [conv(x[..., g * cin : (g + 1) * cin], k[..., g * cout : (g + 1) * cout]) for g in range(groups)], axis=-1
        )
        return [y, *tf.gradients(tf.reduce_sum(y * y), [x, k])], [y_ref, *tf.gradients(tf.reduce_sum(y_ref**2), [x, k])]

    with tf.init_scope():
        try:
            got, want = grouped_and_reference(tf.constant(x_np), tf.constant(k_np))
            return all(a.shape == b.shape and np.allclose(a.numpy(), b.numpy(), atol=1e-3) for a, b in zip(got, want))
        except (tf.errors.OpError, ValueError, NotImplementedError):
            return False


def mix_per_image(pi: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``sum_k pi[b, k] * weights[k]`` for every image ``b``: ``[B, K]`` × ``[K, ...]`` → ``[B, ...]``.

    Computed as B separate ``[1, K] @ [K, P]`` products (a broadcast batch matmul), not one ``[B, K] @ [K, P]``
    GEMM: a GEMM's last bits depend on how many rows it has, so an image's kernels would differ in the last bit
    between a batch of 8 on one device and 4 + 4 on two replicas, and sign-gradient attacks amplify such bits into
    other adversarial pixels.  Image by image, one device and N replicas compute the same numbers (and it is
    faster on CPU).
    """
    flat = tf.reshape(weights, [tf.shape(weights)[0], -1])
    mixed = tf.matmul(pi[:, None, :], flat)  # [B, 1, P]; a reshape, not a slice, drops the 1 (no slice gradient)
    return tf.reshape(mixed, tf.concat([tf.shape(pi)[:1], tf.shape(weights)[1:]], 0))


def fold(x: tf.Tensor) -> tf.Tensor:
    """``[B, H, W, C]`` → ``[1, H, W, B·C]``, image-major along channels: the layout of the grouped convolution.

    A network of grouped AAconvs, ReLUs and poolings can stay folded from its first layer to its heads (every op
    but the convolution is per channel), so the batch is transposed once on the way in instead of twice per layer.
    """
    shape = tf.shape(x)
    return tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, shape[1], shape[2], shape[0] * shape[3]])


def unfold(y: tf.Tensor, batch: tf.Tensor | int, channels: int) -> tf.Tensor:
    """``[1, H, W, B·C]`` → ``[B, H, W, C]`` with ``C = channels`` (static), the inverse of ``fold``."""
    shape = tf.shape(y)
    return tf.transpose(tf.reshape(y, [shape[1], shape[2], batch, channels]), [2, 0, 1, 3])


@keras.saving.register_keras_serializable(package="robustdet_tf")
class AAConv2D(keras.layers.Layer):
    """Convolution with K kernels mixed per image by ``pi``; called as ``layer([x, pi])``.

    Args:
      filters: output channels.
      kernel_size, strides, dilation_rate: int or pair, as in ``keras.layers.Conv2D``. Padding is 'valid'.
      num_kernels: K, the number of kernels (the reference's ``k_count``).
      use_bias: whether each kernel has a bias.
      implementation: one of ``"auto"``, ``"grouped"``, ``"map_fn"``, ``"stacked"`` (see the module docstring).
      kernel_initializer, bias_initializer: None for the reference's own init (each kernel kaiming-uniform, a=0:
        U(+-sqrt(6/fan_in)); bias U(+-1/sqrt(fan_in)); fan_in = Cin*kh*kw), or any Keras initializer.

    Weights: ``kernel`` ``[K, kh, kw, Cin, Cout]`` (a PyTorch ``[K, out, in, kh, kw]`` weight maps by transpose
    (0, 3, 4, 2, 1)) and ``bias`` ``[K, Cout]``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        dilation_rate: int | Sequence[int] = 1,
        num_kernels: int = 4,
        use_bias: bool = True,
        implementation: str = "auto",
        kernel_initializer=None,
        bias_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"AAConv2D {self.name}: filters must be a positive int, got {filters!r}.")
        if not isinstance(num_kernels, (int, np.integer)) or num_kernels < 1:
            raise ValueError(f"AAConv2D {self.name}: num_kernels must be a positive int, got {num_kernels!r}.")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"AAConv2D {self.name}: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}."
            )
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        self.num_kernels = int(num_kernels)
        self.use_bias = bool(use_bias)
        self.implementation = implementation
        self.kernel_initializer = keras.initializers.get(kernel_initializer) if kernel_initializer else None
        self.bias_initializer = keras.initializers.get(bias_initializer) if bias_initializer else None
        self.resolved_implementation: str | None = None  # set in build(); "auto" becomes a concrete choice

    # ----------------------------------------------------------------------------------------------- build
    def _split_shapes(self, input_shape) -> tuple[tuple, tuple]:
        """Validate ``[x_shape, pi_shape]`` and return them as tuples."""
        usage = f"AAConv2D {self.name} is called as layer([x, pi]) with x [B, H, W, Cin] and pi [B, {self.num_kernels}]"
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(f"{usage}; got input shape {input_shape!r}.")
        x_shape, pi_shape = input_shape
        if not isinstance(x_shape, (list, tuple)) or not isinstance(pi_shape, (list, tuple)):
            raise ValueError(f"{usage}; got input shape {input_shape!r}.")
        x_shape, pi_shape = tuple(x_shape), tuple(pi_shape)
        if len(x_shape) != 4 or x_shape[-1] is None:
            raise ValueError(f"{usage}; x must be rank 4 with a known channel count, got shape {x_shape}.")
        if len(pi_shape) != 2 or pi_shape[-1] not in (None, self.num_kernels):
            raise ValueError(f"{usage}; pi has shape {pi_shape}: pass the AID output built with the same K.")
        return x_shape, pi_shape

    def build(self, input_shape) -> None:
        x_shape, _ = self._split_shapes(input_shape)
        in_channels = int(x_shape[-1])
        kh, kw = self.kernel_size
        fan_in = in_channels * kh * kw
        kernel_init = self.kernel_initializer or keras.initializers.RandomUniform(
            -math.sqrt(6.0 / fan_in), math.sqrt(6.0 / fan_in)
        )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_kernels, kh, kw, in_channels, self.filters),
            initializer=kernel_init,
        )
        if self.use_bias:
            bias_init = self.bias_initializer or keras.initializers.RandomUniform(
                -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in)
            )
            self.bias = self.add_weight(name="bias", shape=(self.num_kernels, self.filters), initializer=bias_init)
        else:
            self.bias = None
        if self.implementation == "auto":
            grouped_ok = grouped_conv_supported(self.kernel_size, self.strides, self.dilation_rate)
            self.resolved_implementation = "grouped" if grouped_ok else "map_fn"
        else:
            self.resolved_implementation = self.implementation
        self.built = True

    def compute_output_shape(self, input_shape) -> tuple:
        x_shape, _ = self._split_shapes(input_shape)
        height = _conv_output_size(x_shape[1], self.kernel_size[0], self.strides[0], self.dilation_rate[0])
        width = _conv_output_size(x_shape[2], self.kernel_size[1], self.strides[1], self.dilation_rate[1])
        return (x_shape[0], height, width, self.filters)

    # ------------------------------------------------------------------------------------------------ call
    def _conv(self, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        # tf.nn.convolution, not tf.nn.conv2d: without oneDNN the CPU Conv2D kernels have no gradient for
        # dilation > 1 (conv6), and tf.nn.convolution rewrites a dilated conv as space-to-batch + plain conv there.
        return tf.nn.convolution(x, kernel, strides=self.strides, padding="VALID", dilations=self.dilation_rate)

    def _grouped_conv(self, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        return tf.nn.conv2d(x, kernel, strides=self.strides, padding="VALID", dilations=self.dilation_rate)

    def _folded(self, x: tf.Tensor, pi: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """One conv with groups = B on a folded input ``[1, H, W, B·Cin]`` → ``[1, H', W', B·Cout]`` (no bias)."""
        in_channels = self.kernel.shape[-2]
        kernels = tf.transpose(mix_per_image(pi, kernel), [1, 2, 3, 0, 4])  # image-major along outputs
        kernels = tf.reshape(kernels, [self.kernel_size[0], self.kernel_size[1], in_channels, -1])
        return self._grouped_conv(x, kernels)

    def _grouped(self, x: tf.Tensor, pi: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """Batch folded into channels: [B,H,W,C] -> [1,H,W,B*C], one conv with groups = B."""
        return unfold(self._folded(fold(x), pi, kernel), tf.shape(x)[0], self.filters)

    def _map_fn(self, x: tf.Tensor, pi: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """One ordinary convolution per image with its own mixed kernel."""
        kernels = mix_per_image(pi, kernel)
        per_image_shape = self.compute_output_shape([tuple(x.shape), tuple(pi.shape)])[1:]
        # A static per-image shape (when H, W are known) lets the TFLite converter lower the loop to builtins.
        return tf.map_fn(
            lambda args: self._conv(args[0][None], args[1])[0],
            (x, kernels),
            fn_output_signature=tf.TensorSpec(per_image_shape, x.dtype),
        )

    def _stacked(self, x: tf.Tensor, pi: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """All K kernels as one conv with K*Cout outputs, then y = sum_k pi_k * y_k."""
        kh, kw = self.kernel_size
        in_channels = x.shape[-1]
        stacked = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, in_channels, -1])
        y = self._conv(x, stacked)
        out = tf.shape(y)
        y = tf.reshape(y, [out[0], out[1], out[2], self.num_kernels, self.filters])
        return tf.einsum("nhwko,nk->nhwo", y, pi)

    def call(self, inputs, folded: bool = False):
        """``layer([x, pi])``; ``folded=True`` takes and returns the ``fold`` layout (grouped implementation, built
        layer), as a network that stays folded between its layers calls it."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"AAConv2D {self.name} is called as layer([x, pi]); got {type(inputs).__name__}.")
        x, pi = inputs
        x = tf.convert_to_tensor(x)
        pi = tf.cast(pi, x.dtype)
        kernel = tf.cast(self.kernel, x.dtype)
        if folded:
            if self.resolved_implementation != "grouped":
                raise ValueError(f"AAConv2D {self.name}: the folded layout needs the grouped implementation, this "
                                 f"layer runs {self.resolved_implementation!r}.")
            y = self._folded(x, pi, kernel)
            if self.use_bias:  # the images' biases side by side, as the channels are
                y = tf.nn.bias_add(y, tf.reshape(mix_per_image(pi, tf.cast(self.bias, x.dtype)), [-1]))
            return y
        implementation = {"grouped": self._grouped, "map_fn": self._map_fn, "stacked": self._stacked}
        y = implementation[self.resolved_implementation](x, pi, kernel)
        if self.use_bias:
            y = y + mix_per_image(pi, tf.cast(self.bias, x.dtype))[:, None, None, :]
        y.set_shape(self.compute_output_shape([tuple(x.shape), tuple(pi.shape)]))
        return y

    # ------------------------------------------------------------------------------------ weights from SSD
    def set_from_plain(self, kernel, bias=None) -> None:
        """Make all K kernels copies of a plain convolution's (the reference's ``load_weights_expand``,
        docs/reference.md#expanding-a-clean-ssd).

        ``kernel`` is Keras layout ``[kh, kw, Cin, Cout]``, ``bias`` ``[Cout]``. Since sum(pi) = 1 the layer then
        computes exactly the plain convolution, whatever ``pi`` is (docs/reference.md#expanding-a-clean-ssd).
        """
        if not self.built:
            raise ValueError(f"AAConv2D {self.name}: build the layer (call it once) before set_from_plain.")
        expected = tuple(self.kernel.shape[1:])
        if tuple(kernel.shape) != expected:
            raise ValueError(
                f"AAConv2D {self.name}: plain kernel has shape {tuple(kernel.shape)}, expected {expected} "
                "([kh, kw, Cin, Cout]); a PyTorch [out, in, kh, kw] weight needs transpose (2, 3, 1, 0) first."
            )
        self.kernel.assign(tf.broadcast_to(tf.cast(kernel, self.kernel.dtype), self.kernel.shape))
        if self.use_bias:
            if bias is None or tuple(bias.shape) != (self.filters,):
                got = None if bias is None else tuple(bias.shape)
                raise ValueError(f"AAConv2D {self.name}: plain bias must have shape ({self.filters},), got {got}.")
            self.bias.assign(tf.broadcast_to(tf.cast(bias, self.bias.dtype), self.bias.shape))
        elif bias is not None:
            raise ValueError(f"AAConv2D {self.name} has use_bias=False but a plain bias was given.")

    @classmethod
    def from_conv2d(
        cls, conv: keras.layers.Conv2D, num_kernels: int = 4, implementation: str = "auto", name: str | None = None
    ) -> AAConv2D:
        """A built AAConv2D whose K kernels all equal a built, 'valid'-padded ``keras.layers.Conv2D``'s."""
        if not conv.built:
            raise ValueError(f"from_conv2d: Conv2D {conv.name} is not built; call it once first.")
        if conv.padding != "valid" or conv.groups != 1 or conv.data_format != "channels_last":
            raise ValueError(
                f"from_conv2d: Conv2D {conv.name} must be channels_last, groups=1, padding='valid' (pad explicitly "
                f"before it); got padding={conv.padding!r}, groups={conv.groups}, data_format={conv.data_format!r}."
            )
        layer = cls(
            conv.filters,
            conv.kernel_size,
            strides=conv.strides,
            dilation_rate=conv.dilation_rate,
            num_kernels=num_kernels,
            use_bias=conv.use_bias,
            implementation=implementation,
            name=name or conv.name,
        )
        layer.build([(None, None, None, conv.kernel.shape[2]), (None, num_kernels)])
        layer.set_from_plain(conv.kernel, conv.bias if conv.use_bias else None)
        return layer

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            dilation_rate=self.dilation_rate,
            num_kernels=self.num_kernels,
            use_bias=self.use_bias,
            implementation=self.implementation,
            kernel_initializer=(
                keras.initializers.serialize(self.kernel_initializer) if self.kernel_initializer else None
            ),
            bias_initializer=keras.initializers.serialize(self.bias_initializer) if self.bias_initializer else None,
        )
        return config

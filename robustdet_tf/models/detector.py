"""The one SSD300-VGG16 builder shared by the plain SSD and RobustDet (docs/reference.md#the-detector,
docs/reference.md#forward-pass-and-nan-guard).

The trunk, extras and multibox heads are built once, by ``Detector``, from a *convolution factory*: the plain SSD
uses ``keras.layers.Conv2D``, RobustDet the adversarially-aware ``AAConv2D`` (called as ``layer([x, pi])``).  Both
get the same layer names — ``vgg_<i>``, ``extras_<i>``, ``loc_<i>``, ``conf_<i>``, ``l2norm`` after the reference's
module indices — so weights map one-to-one onto each other and onto the official state dicts.

PyTorch pads convolutions symmetrically; TF's ``'same'`` pads stride-2 convolutions asymmetrically, so every
convolution here is ``'valid'`` after an explicit symmetric zero pad (docs/reference.md#porting-notes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf
from keras import ops

from robustdet_tf.layers.aaconv import AAConv2D, fold, unfold
from robustdet_tf.layers.cfr import ProbConv
from robustdet_tf.layers.l2norm import L2Norm

# VGG16 trunk config of ssd.pytorch: numbers are conv widths, "M" floor pooling, "C" ceil-mode pooling.
VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)
# Extra layers as (filters, kernel, stride, padding); the ReLU output of every odd entry is a source.
SSD300_EXTRAS = (
    (256, 1, 1, 0),
    (512, 3, 2, 1),
    (128, 1, 1, 0),
    (256, 3, 2, 1),
    (128, 1, 1, 0),
    (256, 3, 1, 0),
    (128, 1, 1, 0),
    (256, 3, 1, 0),
)
SSD300_BOXES_PER_LOCATION = (4, 6, 6, 6, 4, 4)
CONV4_3_INDEX = 21  # the reference's VGG module index of conv4_3 (the CFR layer)
_SOURCE1_INDEX = 22  # ReLU after conv4_3: its output (L2-normalised) is source 1
_NAN_GUARD_LAST_INDEX = 22  # RobustDet replaces NaN by 0 after VGG modules 0..22

ConvFactory = Callable[..., keras.layers.Layer]


def plain_conv_factory(
    filters: int, kernel_size: int, strides: int, dilation_rate: int, name: str, initializer="glorot_uniform"
):
    """Factory of the plain SSD: an ordinary biased ``Conv2D`` with 'valid' padding.

    The default init is Xavier-uniform with zero bias, the reference's from-scratch init; ``he_normal`` trains a
    deep VGG without batch norm from scratch much faster (the reference starts from ImageNet weights instead).
    """
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="valid", dilation_rate=dilation_rate, name=name,
        kernel_initializer=initializer,
    )


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def vgg_layout(width: float = 1.0) -> list[tuple]:
    """The reference's VGG module list as ``(index, kind, args)`` entries.

    kinds: ``conv`` (filters, kernel, stride, padding, dilation), ``relu``, ``pool`` (mode).  Indices match the
    PyTorch ``nn.ModuleList`` so checkpoint keys ``vgg.<index>.weight`` map onto ``vgg_<index>``.
    """
    layout: list[tuple] = []
    for item in VGG_CFG:
        if item in ("M", "C"):
            layout.append((len(layout), "pool", "ceil" if item == "C" else "floor"))
        else:
            layout.append((len(layout), "conv", (_scaled(item, width), 3, 1, 1, 1)))
            layout.append((len(layout), "relu", None))
    layout.append((len(layout), "pool", "pool5"))
    layout.append((len(layout), "conv", (_scaled(1024, width), 3, 1, 6, 6)))  # conv6, dilated
    layout.append((len(layout), "relu", None))
    layout.append((len(layout), "conv", (_scaled(1024, width), 1, 1, 0, 1)))  # conv7
    layout.append((len(layout), "relu", None))
    return layout


def feature_map_sizes(image_size: int, extras: Sequence[Sequence[int]] = SSD300_EXTRAS) -> tuple[int, ...]:
    """Spatial sizes of the sources for a square input, by convolution arithmetic (38,19,10,5,3,1 for 300)."""
    size = image_size
    sizes = []
    for _, kind, arg in vgg_layout():
        if kind == "pool":
            if arg == "floor":
                size = size // 2
            elif arg == "ceil":
                size = -(-size // 2)
        if _ == _SOURCE1_INDEX:
            sizes.append(size)
    sizes.append(size)  # conv7
    for k, (_, kernel, stride, pad) in enumerate(extras):
        size = (size + 2 * pad - kernel) // stride + 1
        if size < 1:
            raise ValueError(
                f"image size {image_size} is too small for the extra layers {list(map(list, extras))}: extra {k} "
                "would have an empty output; use a larger image or fewer/shallower extras in the model config"
            )
        if k % 2 == 1:
            sizes.append(size)
    return tuple(sizes)


def _nan_to_zero(x):
    return ops.where(ops.isnan(x), ops.zeros_like(x), x)


def _pad(x, pad: int):
    if pad == 0:
        return x
    return ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])


@keras.saving.register_keras_serializable(package="robustdet_tf")
class Detector(keras.layers.Layer):
    """SSD trunk + L2Norm + extras + multibox heads; returns raw ``loc`` and ``logits``.

    Args:
      num_classes: classes including background (VOC 21, COCO 81, or 201 for the official COCO weights).
      width: channel multiplier (1.0 = SSD300; small values give a tiny model of the same structure).
      extras: extra layers as ``(filters, kernel, stride, padding)``.
      boxes_per_location: anchors per cell of each source (must match the prior config).
      conv: ``"plain"`` or ``"aaconv"`` — which convolution factory builds every convolution.
      num_kernels, aaconv_implementation: AAconv settings (``conv="aaconv"``).
      cfr: make conv4_3 the probabilistic CFR layer (needs ``conv="aaconv"``).
      nan_guard: replace NaN by 0 after VGG modules 0..22 as RobustDet's reference forward does.
      kernel_initializer: init of plain convolutions (Xavier-uniform as the reference; ``he_normal`` from scratch).

    ``call(x, pi=None, training=None)`` takes the *preprocessed* image (mean subtracted) and, for AAconv, the
    mixture ``pi [B, K]``.  It returns ``{"loc": [B, P, 4], "logits": [B, P, C]}``, plus ``"cfr_features"`` (the
    sampled/mean conv4_3 output that the decoder reconstructs from), ``"mu"`` and ``"logvar"`` with CFR.
    """

    def __init__(
        self,
        num_classes: int = 21,
        width: float = 1.0,
        extras: Sequence[Sequence[int]] = SSD300_EXTRAS,
        boxes_per_location: Sequence[int] = SSD300_BOXES_PER_LOCATION,
        conv: str = "plain",
        num_kernels: int = 4,
        aaconv_implementation: str = "auto",
        cfr: bool = False,
        nan_guard: bool = False,
        kernel_initializer: str = "glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_initializer = kernel_initializer
        self.num_classes = int(num_classes)
        self.width = float(width)
        self.extras_config = tuple(tuple(int(v) for v in e) for e in extras)
        self.boxes_per_location = tuple(int(a) for a in boxes_per_location)
        self.conv = conv
        self.num_kernels = int(num_kernels)
        self.aaconv_implementation = aaconv_implementation
        self.cfr = bool(cfr)
        self.nan_guard = bool(nan_guard)
        n_sources = 2 + len(self.extras_config) // 2
        if len(self.boxes_per_location) != n_sources:
            raise ValueError(
                f"boxes_per_location has {len(self.boxes_per_location)} entries but the model has {n_sources} "
                f"sources (conv4_3, conv7 and one per pair of extras {list(map(list, self.extras_config))})"
            )
        if self.cfr and conv != "aaconv":
            raise ValueError("cfr=True needs conv='aaconv' (the CFR layer is a pair of AAconvs)")

        factory = self._conv_factory()
        self.vgg_layout = vgg_layout(self.width)
        self.vgg_convs = {}
        for index, kind, arg in self.vgg_layout:
            if kind != "conv":
                continue
            filters, kernel, stride, _, dilation = arg
            name = f"vgg_{index}"
            if self.cfr and index == CONV4_3_INDEX:
                layer = ProbConv(
                    filters, kernel, num_kernels=self.num_kernels, implementation=aaconv_implementation, name=name
                )
            else:
                layer = factory(filters, kernel, stride, dilation, name)
            self.vgg_convs[name] = layer
        self.l2norm = L2Norm(20.0, name="l2norm")
        self.extra_convs = [
            factory(_scaled(f, self.width), k, s, 1, f"extras_{i}") for i, (f, k, s, _) in enumerate(self.extras_config)
        ]
        self.loc_heads = [factory(a * 4, 3, 1, 1, f"loc_{i}") for i, a in enumerate(self.boxes_per_location)]
        self.conf_heads = [
            factory(a * self.num_classes, 3, 1, 1, f"conf_{i}") for i, a in enumerate(self.boxes_per_location)
        ]
        self.pool_floor = keras.layers.MaxPooling2D(2, 2, padding="valid")
        self.pool_ceil = keras.layers.MaxPooling2D(2, 2, padding="same")  # == ceil mode (padding ignored)
        self.pool5 = keras.layers.MaxPooling2D(3, 1, padding="same")  # == 3/1/1 with -inf padding

    def _conv_factory(self) -> ConvFactory:
        if self.conv == "plain":
            return lambda *args: plain_conv_factory(*args, initializer=self.kernel_initializer)
        if self.conv == "aaconv":
            def aaconv_factory(filters, kernel_size, strides, dilation_rate, name):
                return AAConv2D(
                    filters,
                    kernel_size,
                    strides=strides,
                    dilation_rate=dilation_rate,
                    num_kernels=self.num_kernels,
                    implementation=self.aaconv_implementation,
                    name=name,
                )

            return aaconv_factory
        raise ValueError(f"unknown convolution kind {self.conv!r}; use 'plain' or 'aaconv'")

    def all_convs(self) -> dict[str, keras.layers.Layer]:
        """Every convolution by its reference-derived name (the CFR layer included)."""
        convs = dict(self.vgg_convs)
        for group in (self.extra_convs, self.loc_heads, self.conf_heads):
            convs.update({layer.name: layer for layer in group})
        return convs

    def _relu_or_pool(self, h, index: int, kind: str, arg, guard: bool):
        """A VGG module other than a convolution (per channel, so either layout): a ReLU, with the NaN guard in the
        same pass where the reference guards (NaN > 0 is False, so NaN becomes 0), or a pooling."""
        if kind == "relu":
            if guard and index <= _NAN_GUARD_LAST_INDEX:
                return ops.where(h > 0, h, ops.zeros_like(h))
            return ops.relu(h)
        return {"floor": self.pool_floor, "ceil": self.pool_ceil}.get(arg, self.pool5)(h)

    def _runs_folded(self, pi, return_features: bool) -> bool:
        """Whether this call keeps the batch folded into the channels from input to heads (``aaconv.fold``): every
        AAconv built and grouped.  Same arithmetic as the layer-by-layer path without its two transposes of every
        activation per layer (and their gradients); the first call (which builds the layers) and feature requests
        take the layer-by-layer path."""
        if pi is None or return_features or self.conv != "aaconv":
            return False
        convs = [c for c in self.all_convs().values() if isinstance(c, AAConv2D)]
        return all(c.built and c.resolved_implementation == "grouped" for c in convs)

    def _call_folded(self, x, pi, training):
        """``call`` with the batch folded into the channels (see ``_runs_folded``); CFR's layer runs unfolded (its
        noise is drawn per image)."""
        batch = tf.shape(x)[0]
        aux, sources = {}, []
        h = fold(x)
        for index, kind, arg in self.vgg_layout:
            if kind == "conv":
                layer = self.vgg_convs[f"vgg_{index}"]
                if self.cfr and index == CONV4_3_INDEX:
                    per_image = unfold(_pad(h, arg[3]), batch, layer.conv_mean.kernel.shape[-2])
                    out, aux["mu"], aux["logvar"] = layer([per_image, pi], training=training)
                    aux["cfr_features"] = _nan_to_zero(out) if self.nan_guard else out
                    h = fold(out)
                else:
                    h = layer([_pad(h, arg[3]), pi], folded=True)
            else:
                h = self._relu_or_pool(h, index, kind, arg, guard=self.nan_guard)
            if index == _SOURCE1_INDEX:  # L2Norm over each image's channels: [1, H, W, B·C] viewed as [H, W, B, C]
                shape = tf.shape(h)
                per_image = tf.reshape(h, [shape[1], shape[2], batch, -1])
                sources.append(tf.reshape(self.l2norm(per_image), shape))
        sources.append(h)
        for k, layer in enumerate(self.extra_convs):
            h = ops.relu(layer([_pad(h, self.extras_config[k][3]), pi], folded=True))
            if k % 2 == 1:
                sources.append(h)

        def head(layer, source, width):
            out = unfold(layer([_pad(source, 1), pi], folded=True), batch, layer.filters)
            return ops.reshape(out, (batch, -1, width))

        loc = [head(layer, s, 4) for layer, s in zip(self.loc_heads, sources)]
        logits = [head(layer, s, self.num_classes) for layer, s in zip(self.conf_heads, sources)]
        return loc, logits, aux

    def call(self, x, pi=None, training=None, return_features: bool = False):
        if self._runs_folded(pi, return_features):
            return self._outputs(*self._call_folded(x, pi, training))

        def conv(layer, h, pad):
            h = _pad(h, pad)
            return layer(h) if pi is None else layer([h, pi])

        # The reference replaces NaN by 0 after each of VGG modules 0..22. Every conv there is followed by a ReLU
        # and ReLU/pool never create NaN from NaN-free input, so guarding only in the ReLUs (fused) gives the same
        # outputs and gradients without ~23 extra passes over the largest activations. Intermediate features are
        # only returned on request, and then the guard runs after every module as written in the reference.
        guard_every = self.nan_guard and return_features
        features = {}
        aux = {}
        sources = []
        h = x
        for index, kind, arg in self.vgg_layout:
            if kind == "conv":
                layer = self.vgg_convs[f"vgg_{index}"]
                if self.cfr and index == CONV4_3_INDEX:
                    h, aux["mu"], aux["logvar"] = layer([_pad(h, arg[3]), pi], training=training)
                    aux["cfr_features"] = _nan_to_zero(h) if self.nan_guard else h
                else:
                    h = conv(layer, h, arg[3])
            else:
                h = self._relu_or_pool(h, index, kind, arg, guard=self.nan_guard and not guard_every)
            if guard_every and index <= _NAN_GUARD_LAST_INDEX:
                h = _nan_to_zero(h)
            features[f"vgg_{index}"] = h
            if index == _SOURCE1_INDEX:
                sources.append(self.l2norm(h))
        sources.append(h)
        for k, layer in enumerate(self.extra_convs):
            h = ops.relu(conv(layer, h, self.extras_config[k][3]))
            features[f"extras_{k}"] = h
            if k % 2 == 1:
                sources.append(h)

        batch = ops.shape(x)[0]
        loc = [ops.reshape(conv(head, s, 1), (batch, -1, 4)) for head, s in zip(self.loc_heads, sources)]
        logits = [
            ops.reshape(conv(head, s, 1), (batch, -1, self.num_classes)) for head, s in zip(self.conf_heads, sources)
        ]
        out = self._outputs(loc, logits, aux)
        if return_features:
            out["features"] = features
            out["sources"] = sources
        return out

    @staticmethod
    def _outputs(loc, logits, aux) -> dict:
        """The heads concatenated over the sources. Heads and CFR statistics leave in float32 whatever the compute
        dtype (mixed precision): losses, decoding and attack gradients are computed in float32."""
        out = {"loc": ops.concatenate(loc, axis=1), "logits": ops.concatenate(logits, axis=1), **aux}
        return {k: ops.cast(v, "float32") if k != "cfr_features" else v for k, v in out.items()}

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "width": self.width,
            "extras": [list(e) for e in self.extras_config],
            "boxes_per_location": list(self.boxes_per_location),
            "conv": self.conv,
            "num_kernels": self.num_kernels,
            "aaconv_implementation": self.aaconv_implementation,
            "cfr": self.cfr,
            "nan_guard": self.nan_guard,
            "kernel_initializer": self.kernel_initializer,
        }


def preprocess(images: tf.Tensor, mean: Sequence[float]) -> tf.Tensor:
    """Pixel-space RGB ``[0, 255]`` → network input: subtract ``mean`` from (R, G, B) as the reference does."""
    return ops.cast(images, "float32") - ops.convert_to_tensor(mean, "float32")

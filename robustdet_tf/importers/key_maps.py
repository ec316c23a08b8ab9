"""Official PyTorch state-dict keys → our Keras variables, and the layout each tensor needs
(docs/reference.md#porting-notes).

Why a hand-written map instead of matching variables by order: the official state dicts name every tensor after
the PyTorch module that owns it (``vgg.21.conv_mean.weight``, ``disc.base_net.layer2.0.downsample.1.running_var``,
``decoder.3.weight``), and our layers carry the same indices in their names (``vgg_21``, ``layer2_0_downsample_1``,
``decoder_3``), so each tensor has exactly one destination and a checkpoint that does not fit is caught key by key
instead of silently loading into the wrong layer.

Layouts (PyTorch → Keras):

* ``Conv2d`` weight ``[out, in, kh, kw]`` → ``[kh, kw, in, out]``
* ``DynamicConv2d`` (AAconv) weight ``[K, out, in, kh, kw]`` → ``[K, kh, kw, in, out]``; its bias ``[K, out]`` as is
* ``ConvTranspose2d`` weight ``[in, out, kh, kw]`` → Keras ``Conv2DTranspose`` kernel ``[kh, kw, out, in]``
* ``Linear`` weight ``[out, in]`` → ``[in, out]``
* biases, ``L2Norm.weight`` and BatchNorm vectors as they are; ``running_mean``/``running_var`` are the Keras
  ``moving_mean``/``moving_variance``; ``num_batches_tracked`` has no Keras counterpart (ignored on import, written
  as 0 on export so the result loads strictly into the official model).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from robustdet_tf.layers.aaconv import AAConv2D
from robustdet_tf.layers.cfr import ProbConv
from robustdet_tf.models.base import DetectionModelBase
from robustdet_tf.models.discriminator import torchvision_weight_map

# Keras axis order built from the PyTorch array: keras = np.transpose(torch, PERMUTATIONS[layout]).
PERMUTATIONS: dict[str, tuple[int, ...] | None] = {
    "conv": (2, 3, 1, 0),
    "dynamic_conv": (0, 3, 4, 2, 1),
    "conv_transpose": (2, 3, 1, 0),
    "linear": (1, 0),
    "same": None,
}
_BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
NUM_BATCHES_TRACKED = "num_batches_tracked"
AID_PREFIX = "disc.base_net."  # where the official RobustDet keeps the AID's ResNet-18


# --------------------------------------------------------------------------------------------------- layout
def to_keras_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """A PyTorch-layout array in the layout of the matching Keras variable."""
    perm = PERMUTATIONS[layout]
    return np.asarray(array) if perm is None else np.transpose(array, perm)


def to_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """Inverse of ``to_keras_layout``."""
    perm = PERMUTATIONS[layout]
    return np.asarray(array) if perm is None else np.transpose(array, np.argsort(perm))


def torch_shape(shape, layout: str) -> tuple[int, ...]:
    perm = PERMUTATIONS[layout]
    shape = tuple(int(s) for s in shape)
    return shape if perm is None else tuple(shape[i] for i in np.argsort(perm))


# ---------------------------------------------------------------------------------------------- weight maps
def _module_name(layer_name: str) -> str:
    """``vgg_21`` → ``vgg.21``, ``decoder_3`` → ``decoder.3`` (the reference's ModuleList index)."""
    group, _, index = layer_name.rpartition("_")
    if not group or not index.isdigit():
        raise ValueError(f"layer {layer_name!r} does not follow the '<group>_<index>' naming of the detector")
    return f"{group}.{index}"


def _conv_entries(prefix: str, layer) -> dict[str, tuple[Any, str]]:
    """Weights of one detector convolution (plain, AAconv or the CFR ProbConv) under the module name ``prefix``."""
    if isinstance(layer, ProbConv):
        entries = {}
        for part in ("conv_mean", "conv_std"):
            entries.update(_conv_entries(f"{prefix}.{part}", getattr(layer, part)))
        return entries
    if isinstance(layer, AAConv2D):
        entries = {f"{prefix}.weight": (layer.kernel, "dynamic_conv")}
        if layer.use_bias:
            entries[f"{prefix}.bias"] = (layer.bias, "same")
        return entries
    if isinstance(layer, keras.layers.Conv2D):
        entries = {f"{prefix}.weight": (layer.kernel, "conv")}
        if layer.use_bias:
            entries[f"{prefix}.bias"] = (layer.bias, "same")
        return entries
    raise TypeError(f"no PyTorch mapping for detector layer {layer.name!r} of type {type(layer).__name__}")


def _detector_entries(detector) -> dict[str, tuple[Any, str]]:
    """vgg.*, L2Norm.weight, extras.*, loc.*, conf.* in the reference's order."""
    entries: dict[str, tuple[Any, str]] = {}
    convs = detector.all_convs()
    for name in detector.vgg_convs:
        entries.update(_conv_entries(_module_name(name), convs[name]))
    entries["L2Norm.weight"] = (detector.l2norm.weight, "same")
    for group in (detector.extra_convs, detector.loc_heads, detector.conf_heads):
        for layer in group:
            entries.update(_conv_entries(_module_name(layer.name), layer))
    return entries


def _decoder_entries(decoder) -> dict[str, tuple[Any, str]]:
    """``decoder.<i>.*``: convolutions, transposed convolutions and BatchNorm (weights, biases, running stats)."""
    entries: dict[str, tuple[Any, str]] = {}
    for layer in decoder.decoder_layers:
        if not layer.weights:
            continue
        prefix = _module_name(layer.name)
        if isinstance(layer, keras.layers.Conv2DTranspose):
            entries[f"{prefix}.weight"] = (layer.kernel, "conv_transpose")
            entries[f"{prefix}.bias"] = (layer.bias, "same")
        elif isinstance(layer, keras.layers.Conv2D):
            entries[f"{prefix}.weight"] = (layer.kernel, "conv")
            entries[f"{prefix}.bias"] = (layer.bias, "same")
        elif isinstance(layer, keras.layers.BatchNormalization):
            for keras_name, torch_name in _BN_PARAMS.items():
                entries[f"{prefix}.{torch_name}"] = (getattr(layer, keras_name), "same")
        else:
            raise TypeError(f"no PyTorch mapping for decoder layer {layer.name!r} of type {type(layer).__name__}")
    return entries


def resnet_entries(aid: keras.Model, prefix: str) -> dict[str, tuple[Any, str]]:
    """torchvision ResNet-18 keys; within a ResNet a rank-4 tensor is a conv, rank 2 the fc, rank 1 a vector."""
    by_rank = {4: "conv", 2: "linear", 1: "same"}
    return {key: (var, by_rank[len(var.shape)]) for key, var in torchvision_weight_map(aid, prefix).items()}


def official_weight_map(model: keras.Model) -> dict[str, tuple[Any, str]]:
    """Official state-dict key → (our variable, layout) for an SSD, a RobustDet (with or without CFR) or a bare AID.

    Builds the model first if needed.  Keys come in the order of the official state dicts for the detector part.
    """
    if isinstance(model, DetectionModelBase):
        if not model.built:
            model.build()
        entries = _detector_entries(model.detector)
        can = model.capabilities()
        if can.routed:
            entries.update(resnet_entries(model.aid, AID_PREFIX))
        if can.cfr:
            entries.update(_decoder_entries(model.decoder))
        return entries
    if isinstance(model, keras.Model) and any(layer.name == "layer1_0_conv1" for layer in model.layers):
        return resnet_entries(model, "")
    name = model.name if isinstance(model, keras.layers.Layer) else ""
    raise TypeError(
        f"official_weight_map: {type(model).__name__} {name!r} is neither an SSD/RobustDet nor an AID built by "
        "robustdet_tf.models.discriminator.build_discriminator"
    )

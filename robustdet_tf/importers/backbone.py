"""An ImageNet start for the VGG16 trunk, from whichever VGG16 file the user has.

SSD is trained from an ImageNet VGG16 (the reference's baselines load ``weights/vgg16_reducedfc.pth``,
docs/reference.md#baselines).
``config.model.backbone_init`` picks the source of a fresh model's trunk:

* ``"imagenet"``: ``keras.applications.VGG16(weights="imagenet")`` (Keras downloads it once into
  ``~/.keras/models/``);
* a file of any format ``checkpoints/vgg_files.py`` reads (recognised by content): Keras' ``.h5`` or ``.weights.h5``
  with or without the classifier, torchvision's ``vgg16`` state dict, ssd.pytorch's ``vgg16_reducedfc.pth``
  (loaded as the reference loads it: no channel or mean change), ``.npz`` in Keras or PyTorch naming;
* ``"none"``: the initialiser's weights.

Every file goes through one conversion (``trunk_arrays``).  A file without fc6/fc7 (Keras' "notop" file,
torchvision's ``features`` alone) starts conv6/conv7 from ``CONV6_DEFAULT`` (``default_conv67``).

Mapping Keras' VGG16.  The 13 convolutions go to ``vgg_0`` … ``vgg_28`` in order.  Keras' weights expect BGR input
with the ImageNet mean ``(103.939, 116.779, 123.68)`` subtracted from (B, G, R); our models take RGB and subtract
``model.mean`` from (R, G, B).  So the first convolution's input channels are reversed, and its bias absorbs the
mean difference: ``b' = b + Σ W'·(mean_ours − mean_keras)``, which makes every feature equal to Keras VGG16's
wherever no zero padding is involved (at the borders the padded zeros stand for different pixel values).
conv6 / conv7 come from fc6 / fc7 by the reduced-fc subsampling of the SSD paper: fc6 ``[7·7·512, 4096]`` is
viewed as a 7×7 convolution and kept at every 3rd tap (7×7 → 3×3, which conv6's dilation 6 spreads back over the
same 13-pixel field) and every 4th output (4096 → 1024); fc7 keeps every 4th input and output (4096 → 1024).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from robustdet_tf.importers import vgg_files
from robustdet_tf.importers.key_maps import to_keras_layout
from robustdet_tf.layers.aaconv import AAConv2D
from robustdet_tf.layers.cfr import ProbConv
from robustdet_tf.models.factory import build_model

KERAS_VGG16_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5"
)
KERAS_VGG16_FILE = os.path.basename(KERAS_VGG16_URL)
KERAS_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)

# Keras VGG16 layer → our trunk convolution (the reference's vgg ModuleList index).
KERAS_CONVS = {
    "block1_conv1": "vgg_0", "block1_conv2": "vgg_2",
    "block2_conv1": "vgg_5", "block2_conv2": "vgg_7",
    "block3_conv1": "vgg_10", "block3_conv2": "vgg_12", "block3_conv3": "vgg_14",
    "block4_conv1": "vgg_17", "block4_conv2": "vgg_19", "block4_conv3": "vgg_21",
    "block5_conv1": "vgg_24", "block5_conv2": "vgg_26", "block5_conv3": "vgg_28",
}
CONV6, CONV7 = "vgg_31", "vgg_33"
CONV6_DEFAULT = "PyTorch's start for a new convolution, U(±1/√fan_in) for kernel and bias"
"""conv6/conv7 of a file without fc6/fc7 (a notop file), drawn by ``default_conv67``.  Chosen by
``bench/conv67_start.py`` (docs/results/conv67-start.md): with a surrogate trunk whose features were made 10× larger
(an ImageNet VGG16's are presumably larger than the surrogate's; 10× is an assumption), the layers' own Glorot
initialiser (2× this variance in conv6,
3× in conv7) left one run of five stuck at a high loss (0.3 % mAP); this start and subsampled random fc layers, none
of ten.  At the surrogate's own scale every start did alike."""
TRUNK = (*KERAS_CONVS.values(), CONV6, CONV7)
_BACKBONE_KEY = re.compile(r"^(\d+)\.(weight|bias)$")

TrunkArrays = dict[str, tuple[np.ndarray, np.ndarray]]  # vgg_<i> → (Keras-layout kernel, bias)


class BackboneWeightsError(ValueError):
    """The backbone weights cannot be had or do not fit the model; the message says what to do."""


def keras_cache_path() -> str:
    """Where Keras looks for (and downloads) the ImageNet VGG16 file."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", KERAS_VGG16_FILE)


def keras_vgg16(weights: str = "imagenet") -> keras.Model:
    """Keras' ImageNet VGG16 with its classifier (fc1/fc2 become conv6/conv7), downloaded once into Keras' cache."""
    try:
        return keras.applications.VGG16(weights=weights, include_top=True)
    except Exception as err:  # get_file raises a bare Exception on a failed download
        raise BackboneWeightsError(
            f"could not load the ImageNet VGG16 weights ({type(err).__name__}: {err}). Without network access, "
            f"download {KERAS_VGG16_URL} on another machine and put it at {keras_cache_path()} (Keras' cache, "
            f"$KERAS_HOME/models), or pass a file you have: --config.model.backbone_init=/path/to/file. Accepted: "
            f"{vgg_files.ACCEPTED}."
        ) from err


def keras_model_weights(vgg: keras.Model) -> vgg_files.VGG16File:
    """A Keras VGG16 model's weights as a ``VGG16File`` (Caffe convention)."""
    convs = tuple(tuple(np.asarray(w) for w in vgg.get_layer(name).get_weights()) for name in KERAS_CONVS)
    names = {layer.name for layer in vgg.layers}
    fc6, fc7 = (tuple(np.asarray(w) for w in vgg.get_layer(n).get_weights()) if n in names else None
                for n in ("fc1", "fc2"))
    return vgg_files.VGG16File(convs, fc6, fc7, None, "caffe", f"Keras' VGG16 model {vgg.name}")


def reduced_fc(fc6_kernel: np.ndarray, fc6_bias: np.ndarray, fc7_kernel: np.ndarray,
               fc7_bias: np.ndarray) -> TrunkArrays:
    """conv6 ``[3, 3, 512, 1024]`` and conv7 ``[1, 1, 1024, 1024]`` from Keras' fc1 ``[25088, 4096]`` and fc2
    ``[4096, 4096]`` (the flattened 7×7×512 input is row-major in (y, x, channel), channels last)."""
    fc6 = np.asarray(fc6_kernel).reshape(7, 7, -1, np.shape(fc6_kernel)[-1])
    fc7 = np.asarray(fc7_kernel)
    return {
        CONV6: (fc6[::3, ::3, :, ::4], np.asarray(fc6_bias)[::4]),
        CONV7: (fc7[::4, ::4][None, None], np.asarray(fc7_bias)[::4]),
    }


def trunk_arrays(weights: vgg_files.VGG16File, mean: Sequence[float]) -> TrunkArrays:
    """Our trunk's kernels from any VGG16 file, for a model subtracting ``mean`` from its RGB input: the first
    convolution rewritten for that input (``vgg_files.first_conv_for``), conv6/conv7 from fc6/fc7 by the reduced-fc
    subsampling or as ssd.pytorch reduced them; a file without them gives no conv6/conv7 (``start_backbone`` draws
    ``default_conv67``)."""
    arrays: TrunkArrays = dict(zip(KERAS_CONVS.values(), weights.convs))
    arrays["vgg_0"] = vgg_files.first_conv_for(*arrays["vgg_0"], weights.convention, mean)
    if weights.fc6 is not None and weights.fc7 is not None:
        arrays.update(reduced_fc(*weights.fc6, *weights.fc7))
    elif weights.reduced is not None:
        arrays[CONV6], arrays[CONV7] = weights.reduced
    return arrays


def keras_vgg16_arrays(vgg: keras.Model, mean: Sequence[float]) -> TrunkArrays:
    """Our trunk's kernels from a Keras VGG16 model, for a model subtracting ``mean`` from its RGB input."""
    return trunk_arrays(keras_model_weights(vgg), mean)


def is_vgg_backbone_state(state: Mapping[str, np.ndarray]) -> bool:
    """A state dict of the bare ``vgg`` ModuleList (``vgg16_reducedfc.pth``): only ``<index>.weight|bias`` keys."""
    return bool(state) and all(_BACKBONE_KEY.match(key) for key in state)


def reducedfc_arrays(state: Mapping[str, np.ndarray]) -> TrunkArrays:
    """Our trunk's kernels from ssd.pytorch's ``vgg16_reducedfc.pth`` state dict (PyTorch layout)."""
    wanted = {f"{name.split('_')[1]}.{part}" for name in TRUNK for part in ("weight", "bias")}
    missing, unknown = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unknown:
        raise BackboneWeightsError(f"not ssd.pytorch's vgg16_reducedfc state dict: missing {missing}, unknown "
                                   f"{unknown}; it holds the 15 convolutions 0, 2, …, 28, 31, 33.")
    return {name: (to_keras_layout(np.asarray(state[f"{name.split('_')[1]}.weight"]), "conv"),
                   np.asarray(state[f"{name.split('_')[1]}.bias"])) for name in TRUNK}


def _plain_kernel_shape(layer) -> tuple[int, ...]:
    """The ``[kh, kw, in, out]`` kernel shape of a trunk convolution (plain, one of an AAconv's K, CFR's mean)."""
    layer = layer.conv_mean if isinstance(layer, ProbConv) else layer
    return tuple(layer.kernel.shape[1:] if isinstance(layer, AAConv2D) else layer.kernel.shape)


def default_conv67(model: keras.Model) -> TrunkArrays:
    """conv6/conv7 for a file without fc6/fc7 (``CONV6_DEFAULT``): kernel and bias uniform in ±1/√fan_in, as
    PyTorch starts a new ``nn.Conv2d``, so what the reference would give a convolution it has no weights for.
    Drawn from Keras' global seed (``train.seed_run`` seeds it), so one seed gives one start."""
    if not model.built:
        model.build()
    convs = model.detector.all_convs()
    out = {}
    for name in (CONV6, CONV7):
        shape = _plain_kernel_shape(convs[name])
        bound = 1.0 / float(np.sqrt(np.prod(shape[:-1])))
        draw = keras.initializers.RandomUniform(-bound, bound)
        out[name] = (keras.ops.convert_to_numpy(draw(shape)), keras.ops.convert_to_numpy(draw((shape[-1],))))
    return out


def load_trunk(model: keras.Model, arrays: TrunkArrays, source: str) -> keras.Model:
    """Assign ``arrays`` to the model's trunk (plain, AAconv: all K kernels, CFR: ``conv_mean``); every shape is
    checked first, so a model of another width is refused with nothing assigned."""
    if not model.built:
        model.build()
    convs = model.detector.all_convs()
    targets = {}
    wrong = []
    for name, (kernel, _) in arrays.items():
        layer = convs[name]
        expected = _plain_kernel_shape(layer)
        if tuple(kernel.shape) != expected:
            wrong.append(f"{name}: weights {tuple(kernel.shape)}, model {expected}")
        targets[name] = layer.conv_mean if isinstance(layer, ProbConv) else layer
    if wrong:
        raise BackboneWeightsError(
            f"{source} does not fit the model's VGG16 trunk ({'; '.join(wrong)}); the ImageNet trunk needs the full "
            f"SSD300 channels: config.model.width=1.0 (got {model.width})."
        )
    for name, (kernel, bias) in arrays.items():
        layer = targets[name]
        if isinstance(layer, AAConv2D):
            layer.set_from_plain(kernel.astype(np.float32), bias.astype(np.float32))
        else:
            layer.kernel.assign(kernel.astype(np.float32))
            layer.bias.assign(bias.astype(np.float32))
    return model


def model_with_backbone(model_config: Mapping, state: Mapping[str, np.ndarray], source: str) -> keras.Model:
    """A fresh model of ``model_config`` whose trunk is the bare VGG16 state dict ``state`` (``--mode=import`` of
    ``vgg16_reducedfc.pth``); the rest keeps its initialiser's weights."""
    return load_trunk(build_model(model_config), reducedfc_arrays(state), source)


def start_backbone(model: keras.Model, backbone_init: str | None) -> str:
    """Apply ``config.model.backbone_init`` (``"none"``, ``"imagenet"`` or a file of any accepted format, see
    ``checkpoints/vgg_files.py``) to a fresh model; returns what was loaded, for the run's report."""
    spec = str(backbone_init or "none")
    if spec == "none":
        return "none"
    if spec == "imagenet":
        weights = keras_model_weights(keras_vgg16("imagenet"))
        weights = dataclasses.replace(weights, found="Keras' ImageNet VGG16 (with its classifier)")
    elif os.path.isfile(spec):
        try:
            weights = vgg_files.read_vgg16(spec)
        except vgg_files.VGG16FileError as err:
            raise BackboneWeightsError(f"config.model.backbone_init={spec!r}: {err}. Accepted: "
                                       f"{vgg_files.ACCEPTED}.") from None
    else:
        raise BackboneWeightsError(f"config.model.backbone_init={spec!r}: no such file, and not 'none' or "
                                   f"'imagenet'. Accepted files: {vgg_files.ACCEPTED}.")
    arrays = trunk_arrays(weights, model.mean)
    loaded = "the 13 trunk convolutions"
    if CONV6 in arrays:
        loaded += " and conv6/conv7" + (" (fc6/fc7 subsampled)" if weights.fc6 is not None else "")
    else:
        arrays.update(default_conv67(model))
        loaded += f"; conv6/conv7 (the file has no fc layers) from {CONV6_DEFAULT}"
    load_trunk(model, arrays, spec)
    how = {"caffe": "BGR order and mean folded in", "torchvision": "scale and mean folded in",
           "reference": "as they are"}[weights.convention]
    return f"{weights.found}: {loaded}, first convolution {how}; the other layers from their initialisers"


def initialise_backbone(model: keras.Model, backbone_init: str | None) -> keras.Model:
    """``start_backbone`` returning the model."""
    start_backbone(model, backbone_init)
    return model

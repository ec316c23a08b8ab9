"""The ImageNet VGG16 files people have, read by content into one form: Keras layout, and the input they expect.

Why by content: the same weights travel as Keras' ``.h5`` (with or without the classifier, Keras 2's layout or
Keras 3's ``.weights.h5``), torchvision's ``vgg16`` state dict, ssd.pytorch's ``vgg16_reducedfc.pth`` and ``.npz``
exports in either naming, under any file name.  Each is recognised by what it holds (HDF5 layer groups, state-dict
keys), and every one becomes a ``VGG16File``: the 13 convolutions and, where the file has them, fc6/fc7 (or the
already reduced conv6/conv7), all in Keras layout, plus the *input convention* its first convolution was trained
for.  ``checkpoints/backbone.py`` then applies one conversion to all of them (channel order, scale and mean folded
into the first convolution, fc subsampling).

Conventions (the input the file's first convolution expects, from pixels ``x`` in 0–255):

* ``caffe`` — BGR, ``x − (103.939, 116.779, 123.68)`` (Keras' VGG16, converted from the Caffe model);
* ``torchvision`` — RGB, ``(x / 255 − (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)``;
* ``reference`` — whatever the network is fed: ssd.pytorch's ``vgg16_reducedfc.pth`` is loaded as the reference
  loads it, with no channel or mean change (its numbers depend on that).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import numpy as np

from robustdet_tf.importers.key_maps import to_keras_layout
from robustdet_tf.importers.torch_import import read_state_dict

KERAS_LAYERS = ("block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "block3_conv1", "block3_conv2",
                "block3_conv3", "block4_conv1", "block4_conv2", "block4_conv3", "block5_conv1", "block5_conv2",
                "block5_conv3")
"""Keras' names of VGG16's 13 convolutions, in order."""
TORCH_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
"""The same convolutions' indices in torchvision's ``features`` and ssd.pytorch's ``vgg`` lists."""
CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
REDUCED = (31, 33)
"""ssd.pytorch's conv6 and conv7 (``vgg16_reducedfc.pth``)."""

ACCEPTED = ("Keras VGG16 weights (.h5 or .weights.h5, with or without the classifier: "
            "vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5), torchvision's vgg16 state dict (.pth: features.*, "
            "classifier.*), ssd.pytorch's vgg16_reducedfc.pth (0.weight … 33.bias), or .npz arrays in either naming "
            "(block1_conv1/kernel … fc2/bias, or features.0.weight … / 0.weight …)")

CONVENTIONS = {
    # name: (file channel j holds RGB channel source[j], offset in pixels of each file channel, gain of each)
    "caffe": ((2, 1, 0), (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    "torchvision": ((0, 1, 2), tuple(255.0 * m for m in (0.485, 0.456, 0.406)),
                    tuple(1.0 / (255.0 * s) for s in (0.229, 0.224, 0.225))),
}

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_NAME = re.compile(r"^(block[1-5]_conv[1-4]|fc1|fc2|predictions)$")
_KERAS_KEY = re.compile(r"^(block[1-5]_conv[1-4]|fc1|fc2|predictions)[/._:]")
_KERAS3_VAR = re.compile(r"^layers/((?:conv2d|dense)(?:_\d+)?)/vars/\d+$")
_TORCH_KEY = re.compile(r"^(?:features\.)?(\d+)\.(weight|bias)$")

Pair = tuple[np.ndarray, np.ndarray]


class VGG16FileError(ValueError):
    """A file that is not a usable VGG16: the message names what was found, what was expected, and the formats."""


@dataclasses.dataclass(frozen=True)
class VGG16File:
    """A VGG16's weights in Keras layout.

    Attributes:
      convs: the 13 convolutions ``(kernel [3, 3, in, out], bias)`` in order.
      fc6, fc7: ``(kernel, bias)`` of the classifier's first two layers (fc6 ``[25088, 4096]`` with rows in (y, x,
        channel) order, fc7 ``[4096, 4096]``), or ``None`` for a file without them.
      reduced: ssd.pytorch's conv6/conv7 ``(kernel, bias)`` pair, already reduced, or ``None``.
      convention: ``caffe``, ``torchvision`` or ``reference`` (see the module docstring).
      found: what the file was recognised as, for messages and the run's report.
    """

    convs: tuple[Pair, ...]
    fc6: Pair | None
    fc7: Pair | None
    reduced: tuple[Pair, Pair] | None
    convention: str
    found: str

    @property
    def has_fc(self) -> bool:
        return self.fc6 is not None or self.reduced is not None


def read_vgg16(path: str) -> VGG16File:
    """Recognise ``path`` by content and read it (see the module docstring for the formats)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VGG16FileError(f"{path}: no such file. Accepted: {ACCEPTED}.")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head == HDF5_MAGIC:
        return _checked(_from_named(_hdf5_layers(path), f"Keras VGG16 HDF5 file {path}"), path)
    try:
        state = read_state_dict(path)
    except Exception as err:  # not a state dict either: say what was expected
        raise VGG16FileError(f"{path}: neither an HDF5 file nor a state dict readable as .npz or by torch.load "
                             f"({type(err).__name__}: {err}). Accepted: {ACCEPTED}.") from err
    return _checked(_from_state(state, path), path)


def _hdf5_layers(path: str) -> dict[str, list[np.ndarray]]:
    """Every dataset of the file grouped by the VGG16 layer whose group holds it: by layer name in Keras 2's files
    (``block1_conv1/block1_conv1/kernel:0``, a whole saved model's ``model_weights/block1_conv1/...``), by class
    and rank in Keras 3's ``.weights.h5`` (``layers/conv2d_<i>/vars/0``: the i-th convolution, ``dense``,
    ``dense_1`` the classifier's fc1, fc2)."""
    import h5py

    layers: dict[str, list[np.ndarray]] = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            owners = [part for part in name.split("/") if _KERAS_NAME.match(part)]
            if owners:
                layers.setdefault(owners[-1], []).append(np.asarray(item[()]))

    by_class: dict[str, list[np.ndarray]] = {}

    def visit_keras3(name, item):  # Keras 3 names a saved layer by its class and position: conv2d, conv2d_1, ...
        found = _KERAS3_VAR.match(name)
        if isinstance(item, h5py.Dataset) and found:
            by_class.setdefault(found.group(1), []).append(np.asarray(item[()]))

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
        if not layers:
            handle.visititems(visit_keras3)
    if layers or not by_class:
        return layers
    convs = sorted((n for n in by_class if n.startswith("conv2d")), key=_keras3_position)
    denses = sorted((n for n in by_class if n.startswith("dense")), key=_keras3_position)
    if len(convs) == 16:
        return {"block5_conv4": []}  # VGG19's four convolutions in blocks 3-5: refused by _from_named
    layers = {keras_name: by_class[saved] for keras_name, saved in zip(KERAS_LAYERS, convs)}
    layers.update({keras_name: by_class[saved] for keras_name, saved in zip(("fc1", "fc2"), denses)})
    return layers


def _keras3_position(name: str) -> int:
    """``conv2d`` → 0, ``conv2d_12`` → 12 (the layer's rank among the layers of its class)."""
    suffix = re.search(r"_(\d+)$", name)
    return int(suffix.group(1)) if suffix else 0


def _pair(arrays: list[np.ndarray], where: str) -> Pair:
    kernels = [a for a in arrays if a.ndim > 1]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1:
        raise VGG16FileError(f"{where}: expected one kernel and one bias, found arrays of shapes "
                             f"{[a.shape for a in arrays]}")
    return kernels[0].astype(np.float32), biases[0].astype(np.float32)


def _from_named(layers: Mapping[str, list[np.ndarray]], found: str) -> VGG16File:
    """Keras naming and layout."""
    if any(name.endswith("_conv4") for name in layers):
        raise VGG16FileError(f"{found} holds block*_conv4 layers: a VGG19, not a VGG16")
    missing = [name for name in KERAS_LAYERS if name not in layers]
    if missing:
        raise VGG16FileError(f"{found} lacks the VGG16 convolutions {missing} (holds {sorted(layers) or 'none'})")
    convs = tuple(_pair(layers[name], f"{found}, layer {name}") for name in KERAS_LAYERS)
    fc6 = _pair(layers["fc1"], f"{found}, layer fc1") if "fc1" in layers else None
    fc7 = _pair(layers["fc2"], f"{found}, layer fc2") if "fc2" in layers else None
    top = "with its classifier (fc1/fc2)" if fc6 is not None and fc7 is not None else "without the classifier"
    return VGG16File(convs, fc6, fc7, None, "caffe", f"{found} ({top})")


def _from_state(state: Mapping[str, np.ndarray], path: str) -> VGG16File:
    keys = list(state)
    if any(key.endswith(("running_mean", "running_var")) for key in keys):
        raise VGG16FileError(f"{path} holds batch-norm statistics (e.g. {next(k for k in keys if 'running' in k)}): "
                             "a vgg16_bn, whose convolutions do not work without them")
    if keys and all(_KERAS_KEY.match(key) for key in keys):
        layers: dict[str, list[np.ndarray]] = {}
        for key in keys:
            layers.setdefault(_KERAS_KEY.match(key).group(1), []).append(state[key])
        return _from_named(layers, f"arrays in Keras naming in {path}")
    torchvision = any(key.startswith("features.") for key in keys)
    trunk = {k: v for k, v in state.items() if _TORCH_KEY.match(k) and (k.startswith("features.") == torchvision)}
    classifier = {k: v for k, v in state.items() if k.startswith("classifier.")}
    unknown = sorted(set(keys) - set(trunk) - set(classifier))
    if not trunk or unknown:
        shown = unknown[:6] or keys[:6]
        raise VGG16FileError(f"{path}: found the keys {shown}{' …' if len(unknown or keys) > 6 else ''}; expected "
                             "a VGG16 in one of the accepted namings")
    prefix = "features." if torchvision else ""

    def torch_pair(index: int) -> Pair:
        weight, bias = f"{prefix}{index}.weight", f"{prefix}{index}.bias"
        if weight not in trunk or bias not in trunk:
            raise VGG16FileError(f"{path}: lacks {weight} / {bias} (holds {sorted(trunk)[:6]} …)")
        return to_keras_layout(np.asarray(trunk[weight]), "conv").astype(np.float32), \
            np.asarray(trunk[bias], np.float32)

    convs = tuple(torch_pair(i) for i in TORCH_INDICES)
    if torchvision:
        fc6 = fc7 = None
        if "classifier.0.weight" in classifier and "classifier.3.weight" in classifier:
            w6 = np.asarray(classifier["classifier.0.weight"])  # [4096, 512·7·7], inputs in (c, y, x) order
            fc6 = (w6.reshape(-1, 512, 7, 7).transpose(2, 3, 1, 0).reshape(7 * 7 * 512, -1).astype(np.float32),
                   np.asarray(classifier["classifier.0.bias"], np.float32))
            fc7 = (np.asarray(classifier["classifier.3.weight"]).T.astype(np.float32),
                   np.asarray(classifier["classifier.3.bias"], np.float32))
        top = "with its classifier" if fc6 is not None else "without the classifier"
        return VGG16File(convs, fc6, fc7, None, "torchvision", f"torchvision vgg16 state dict {path} ({top})")
    reduced = None
    if all(f"{i}.weight" in trunk for i in REDUCED):
        reduced = (torch_pair(REDUCED[0]), torch_pair(REDUCED[1]))
    what = "with conv6/conv7" if reduced is not None else "without conv6/conv7"
    return VGG16File(convs, None, None, reduced, "reference",
                     f"ssd.pytorch's VGG16 list {path} ({what}, loaded as the reference loads it)")


def _checked(weights: VGG16File, path: str) -> VGG16File:
    """Every convolution shaped as VGG16's (3×3, 3 → 64 → … → 512), fc6/fc7 and conv6/conv7 too."""
    wrong = []
    cin = 3
    for index, ((kernel, bias), cout) in enumerate(zip(weights.convs, CHANNELS)):
        if kernel.shape != (3, 3, cin, cout) or bias.shape != (cout,):
            wrong.append(f"{KERAS_LAYERS[index]}: {kernel.shape}/{bias.shape}, expected {(3, 3, cin, cout)}/"
                         f"{(cout,)}")
        cin = cout
    expected = {"fc6": (7 * 7 * 512, 4096), "fc7": (4096, 4096)}
    for name, pair in (("fc6", weights.fc6), ("fc7", weights.fc7)):
        if pair is not None and pair[0].shape != expected[name]:
            wrong.append(f"{name}: {pair[0].shape}, expected {expected[name]} (224×224 ImageNet VGG16)")
    if weights.reduced is not None:
        for (kernel, _), shape in zip(weights.reduced, ((3, 3, 512, 1024), (1, 1, 1024, 1024))):
            if kernel.shape != shape:
                wrong.append(f"conv6/conv7: {kernel.shape}, expected {shape}")
    if wrong:
        raise VGG16FileError(f"{weights.found} is not shaped as VGG16: {'; '.join(wrong)}")
    return weights


def first_conv_for(kernel: np.ndarray, bias: np.ndarray, convention: str, mean_rgb) -> Pair:
    """The first convolution rewritten for a model fed ``RGB − mean_rgb`` (pixels 0–255): input channels put in RGB
    order and scaled by the convention's gain, the mean difference folded into the bias (exact wherever no zero
    padding is involved)."""
    if convention == "reference":
        return kernel, bias
    source, offset, gain = CONVENTIONS[convention]
    rgb = np.zeros_like(kernel, dtype=np.float64)
    offset_rgb = np.zeros(3)
    for channel, (src, off, g) in enumerate(zip(source, offset, gain)):
        rgb[:, :, src, :] = kernel[:, :, channel, :].astype(np.float64) * g
        offset_rgb[src] = off
    shift = np.asarray(mean_rgb, np.float64) - offset_rgb
    folded = bias.astype(np.float64) + np.einsum("hwco,c->o", rgb, shift)
    return rgb.astype(np.float32), folded.astype(np.float32)

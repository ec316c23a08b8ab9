"""Official PyTorch checkpoints ↔ our Keras models (spec §11, ``/work/shared/spec/state_dict_keys.txt``).

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

Reading uses ``torch.load(path, map_location="cpu", weights_only=True)``; torch is imported only then
(``pip install -r requirements-torch.txt``).  Everything else works on a plain mapping of numpy arrays, so a
``.npz`` file or a dict built in a test goes through the same checks.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

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


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model; the message lists every unknown, missing and mis-shaped key."""


# --------------------------------------------------------------------------------------------------- layout
def to_keras_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """A PyTorch-layout array in the layout of the matching Keras variable."""
    perm = PERMUTATIONS[layout]
    return np.asarray(array) if perm is None else np.transpose(array, perm)


def to_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """Inverse of ``to_keras_layout``."""
    perm = PERMUTATIONS[layout]
    return np.asarray(array) if perm is None else np.transpose(array, np.argsort(perm))


def _torch_shape(shape, layout: str) -> tuple[int, ...]:
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
    from robustdet_tf.layers.aaconv import AAConv2D
    from robustdet_tf.layers.cfr import ProbConv

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


def _resnet_entries(aid: keras.Model, prefix: str) -> dict[str, tuple[Any, str]]:
    """torchvision ResNet-18 keys; within a ResNet a rank-4 tensor is a conv, rank 2 the fc, rank 1 a vector."""
    from robustdet_tf.models.discriminator import torchvision_weight_map

    by_rank = {4: "conv", 2: "linear", 1: "same"}
    return {key: (var, by_rank[len(var.shape)]) for key, var in torchvision_weight_map(aid, prefix).items()}


def official_weight_map(model: keras.Model) -> dict[str, tuple[Any, str]]:
    """Official state-dict key → (our variable, layout) for an SSD, a RobustDet (with or without CFR) or a bare AID.

    Builds the model first if needed.  Keys come in the order of the official state dicts for the detector part.
    """
    from robustdet_tf.models.ssd import DetectionModelBase

    if isinstance(model, DetectionModelBase):
        if not model.built:
            model.build()
        entries = _detector_entries(model.detector)
        aid = getattr(model, "aid", None)
        if aid is not None:
            entries.update(_resnet_entries(aid, AID_PREFIX))
        decoder = getattr(model, "decoder", None)
        if decoder is not None:
            entries.update(_decoder_entries(decoder))
        return entries
    if isinstance(model, keras.Model) and any(layer.name == "layer1_0_conv1" for layer in model.layers):
        return _resnet_entries(model, "")
    raise TypeError(
        f"official_weight_map: {type(model).__name__} {getattr(model, 'name', '')!r} is neither an SSD/RobustDet "
        "nor an AID built by robustdet_tf.models.discriminator.build_discriminator"
    )


# ------------------------------------------------------------------------------------------------- reading
def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _is_array_like(value) -> bool:
    return hasattr(value, "shape") and (hasattr(value, "detach") or isinstance(value, (np.ndarray, np.generic)))


def normalise_state_dict(state_dict: Mapping[str, Any], source: str = "state dict") -> dict[str, np.ndarray]:
    """Numpy arrays keyed by the official names: unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and
    strips the ``module.`` prefix ``nn.DataParallel`` adds to every key."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{source}: expected a mapping of tensor names to arrays, got {type(state_dict).__name__}")
    if state_dict and not any(_is_array_like(v) for v in state_dict.values()):
        for container in ("state_dict", "model", "net"):
            if isinstance(state_dict.get(container), Mapping):
                return normalise_state_dict(state_dict[container], f"{source}[{container!r}]")
        raise CheckpointMismatchError(
            f"{source} holds no tensors; its top-level keys are {sorted(map(str, state_dict))}. Pass the model's "
            "state_dict (torch.save(model.state_dict(), path)), not a training checkpoint of another layout."
        )
    arrays = {str(k): _to_numpy(v) for k, v in state_dict.items()}
    if arrays and all(k.startswith("module.") for k in arrays):
        arrays = {k[len("module.") :]: v for k, v in arrays.items()}
    return arrays


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays, from a mapping, a ``.npz`` file or a PyTorch file (``torch.load``, CPU,
    ``weights_only=True``: a checkpoint cannot run code while loading)."""
    if isinstance(source, Mapping):
        return normalise_state_dict(source)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return normalise_state_dict({k: data[k] for k in data.files}, path)
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"reading the PyTorch checkpoint {path} needs torch: pip install -r requirements-torch.txt "
            "(or convert it to .npz of numpy arrays elsewhere)"
        ) from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"could not read {path} with torch.load(weights_only=True): {err}") from err
    return normalise_state_dict(state, path)


# ----------------------------------------------------------------------------------------------- load / dump
def _assign(entries: Mapping[str, tuple[Any, str]], state: Mapping[str, np.ndarray], what: str, ignored=()) -> None:
    """Check every key and shape first (all problems in one error), then assign."""
    ignored = set(ignored)
    bn_modules = {key.rsplit(".", 1)[0] for key in entries if key.endswith(".running_mean")}
    unknown, wrong = [], []
    for key, value in state.items():
        if key in ignored:
            continue
        if key.endswith("." + NUM_BATCHES_TRACKED) and key.rsplit(".", 1)[0] in bn_modules:
            continue
        if key not in entries:
            unknown.append(key)
            continue
        variable, layout = entries[key]
        expected = _torch_shape(variable.shape, layout)
        if tuple(value.shape) != expected:
            wrong.append(f"{key}: checkpoint {tuple(value.shape)}, model expects {expected}")
    missing = [key for key in entries if key not in state]
    if unknown or missing or wrong:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} unknown key(s): {unknown}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {missing}")
        if wrong:
            parts.append(f"{len(wrong)} wrong shape(s) (PyTorch layout): {wrong}")
        raise CheckpointMismatchError(
            f"{what}: the checkpoint does not fit the model. " + "; ".join(parts) + ". Check that the model config "
            "(kind ssd/robustdet, cfr, num_kernels, num_classes, width, extras) is the one the checkpoint was "
            "trained with; a clean SSD checkpoint goes into a RobustDet through import_checkpoint(..., "
            "expand_clean_ssd=True)."
        )
    for key, (variable, layout) in entries.items():
        variable.assign(to_keras_layout(state[key], layout).astype(variable.dtype))


def load_state_dict(model: keras.Model, state_dict: Mapping[str, Any] | str | os.PathLike) -> keras.Model:
    """Load an official state dict (mapping or file) into our SSD / RobustDet / RobustDet* / AID, strictly.

    Raises ``CheckpointMismatchError`` naming every unknown key, missing key and wrong shape (nothing is assigned
    then).  Returns the model.
    """
    state = read_state_dict(state_dict)
    what = state_dict if isinstance(state_dict, (str, os.PathLike)) else "state dict"
    _assign(official_weight_map(model), state, f"{what} → {type(model).__name__} {model.name!r}")
    return model


def load_torchvision_resnet18(aid_or_model: keras.Model, state_dict: Mapping[str, Any] | str | os.PathLike):
    """Load torchvision's ImageNet ResNet-18 (``resnet18-f37072fd.pth``) into the AID, its 1000-way ``fc``
    excluded: the AID's K-way fc keeps its fresh init, as in the reference (spec §3.2, §3.5).

    Accepts the AID itself or a RobustDet (its ``aid`` is used).  Returns the AID.
    """
    aid = getattr(aid_or_model, "aid", aid_or_model)
    if hasattr(aid_or_model, "aid") and not aid_or_model.built:
        aid_or_model.build()
    state = read_state_dict(state_dict)
    entries = {k: v for k, v in _resnet_entries(aid, "").items() if not k.startswith("fc.")}
    what = state_dict if isinstance(state_dict, (str, os.PathLike)) else "state dict"
    _assign(entries, state, f"{what} → AID {aid.name!r} (torchvision resnet18)", ignored={"fc.weight", "fc.bias"})
    return aid


def to_state_dict(model: keras.Model, include_num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
    """Our model as an official state dict: numpy arrays in PyTorch layout keyed by the official names.

    With ``include_num_batches_tracked`` every BatchNorm also gets ``num_batches_tracked = 0`` (int64), so the
    dict has exactly the official key set and loads with ``strict=True`` into the reference model.
    """
    state: dict[str, np.ndarray] = {}
    for key, (variable, layout) in official_weight_map(model).items():
        state[key] = np.ascontiguousarray(to_torch_layout(keras.ops.convert_to_numpy(variable), layout))
        if include_num_batches_tracked and key.endswith(".running_var"):
            state[key.rsplit(".", 1)[0] + "." + NUM_BATCHES_TRACKED] = np.array(0, np.int64)
    return state


# ------------------------------------------------------------------------------------------- main.py entry
def _ssd_only_config(config: Mapping[str, Any]) -> tuple[dict, dict]:
    """Split a RobustDet config into (SSD constructor arguments, RobustDet-only arguments)."""
    from robustdet_tf.models.ssd import SSD

    accepted = set()
    for klass in SSD.__mro__:
        if klass is keras.Model:
            break
        accepted |= set(inspect.signature(klass.__init__).parameters) - {"self", "args", "kwargs"}
    ssd = {k: v for k, v in config.items() if k in accepted and k not in ("adversarial", "clean_mix")}
    rest = {k: v for k, v in config.items() if k not in ssd and k != "name"}
    return ssd, rest


def import_checkpoint(
    path: str | os.PathLike | Mapping[str, Any],
    model_config: Mapping[str, Any],
    expand_clean_ssd: bool = False,
    aid_checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
) -> keras.Model:
    """Build the model of ``model_config`` (``config.model`` of a file in ``configs/``) and load an official
    checkpoint into it.

    Args:
      path: the official state dict (``.pth``/``.pt``, ``.npz`` or a mapping).
      model_config: ``{"kind": "ssd" | "robustdet", ...constructor arguments}``.
      expand_clean_ssd: the checkpoint is a clean SSD (``ssd300_mAP_77.43_v2.pth``) to expand into the RobustDet
        of ``model_config`` with K identical kernels per convolution (the reference's ``load_weights_expand``,
        spec §3.5); the AID, ``conv_std`` and the decoder keep their fresh init.
      aid_checkpoint: torchvision's ImageNet ResNet-18 for the AID (fc excluded), loaded after the checkpoint.
    """
    from robustdet_tf.models import build_model
    from robustdet_tf.models.robustdet import RobustDet

    config = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
    state = read_state_dict(path)
    if expand_clean_ssd:
        if config.get("kind") != "robustdet":
            raise ValueError(
                f"expand_clean_ssd needs a RobustDet model config (kind='robustdet'), got kind {config.get('kind')!r}"
            )
        ssd_config, robust_config = _ssd_only_config({k: v for k, v in config.items() if k != "kind"})
        ssd = load_state_dict(build_model({"kind": "ssd", **ssd_config}), state)
        model = RobustDet.from_ssd(ssd, **robust_config)
    else:
        model = load_state_dict(build_model(config), state)
    if aid_checkpoint is not None:
        if not isinstance(model, RobustDet):
            raise ValueError("aid_checkpoint is for RobustDet models; a plain SSD has no AID")
        load_torchvision_resnet18(model, aid_checkpoint)
    return model

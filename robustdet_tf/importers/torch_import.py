"""Reading official PyTorch checkpoints into our Keras models and writing ours back (docs/reference.md#porting-notes).

The key-by-key destinations and layouts are in ``checkpoints/key_maps.py``; this module reads files, checks a whole
state dict against a model before assigning anything, and builds the model of a config for ``--mode=import``.

Reading uses ``torch.load(path, map_location="cpu", weights_only=True)``; torch is imported only then (it is an
optional dependency: ``pip install -r requirements-torch.txt``).  Everything else works on a plain mapping of numpy
arrays, so a ``.npz`` file or a dict built in a test goes through the same checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from robustdet_tf.importers.key_maps import (
    NUM_BATCHES_TRACKED,
    official_weight_map,
    resnet_entries,
    to_keras_layout,
    to_torch_layout,
    torch_shape,
)
from robustdet_tf.models.factory import INIT_KEYS, build_model, constructor_keys, resolved_model_config
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model; the message lists every unknown, missing and mis-shaped key."""


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
        import torch  # optional dependency, only for .pth files
    except ImportError as err:
        raise ImportError(
            f"reading the PyTorch checkpoint {path} needs torch: pip install -r requirements-torch.txt "
            "(or convert it to .npz of numpy arrays elsewhere)"
        ) from err
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): copy the .pth file again from where it came from; "
                         "nothing was written")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} is not a PyTorch checkpoint of tensors that can be read safely ({type(err).__name__}: "
            f"{first[:200]}). Give the official RobustDet/SSD .pth (a state dict of tensors) or a .npz of numpy "
            "arrays; files that need weights_only=False could run code while loading and are never opened that "
            "way here. Nothing was written.") from None
    return normalise_state_dict(state, path)


# ----------------------------------------------------------------------------------------------- load / dump
def _some(items: list, shown: int = 5) -> str:
    """The first ``shown`` items and how many more (a mismatch of a whole model lists hundreds of keys)."""
    head = ", ".join(str(item) for item in items[:shown])
    return head + (f" … and {len(items) - shown} more" if len(items) > shown else "")


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
        expected = torch_shape(variable.shape, layout)
        if tuple(value.shape) != expected:
            wrong.append(f"{key}: checkpoint {tuple(value.shape)}, model expects {expected}")
    missing = [key for key in entries if key not in state]
    if unknown or missing or wrong:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} unknown key(s): {_some(unknown)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_some(missing)}")
        if wrong:
            parts.append(f"{len(wrong)} wrong shape(s) (PyTorch layout): {_some(wrong)}")
        raise CheckpointMismatchError(
            f"{what}: the checkpoint does not fit the model. " + "; ".join(parts) + ". Check that the model config "
            "(kind ssd/robustdet, cfr, num_kernels, num_classes, width, extras) is the one the checkpoint was "
            "trained with (--config=configs/... and --config.model.<key>=...); --mode=import expands a clean SSD "
            "checkpoint into a RobustDet config by itself."
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
    excluded: the AID's K-way fc keeps its fresh init, as in the reference (docs/reference.md#expanding-a-clean-ssd).

    Accepts the AID itself or a RobustDet (its ``aid`` is used).  Returns the AID.
    """
    aid = getattr(aid_or_model, "aid", aid_or_model)
    if hasattr(aid_or_model, "aid") and not aid_or_model.built:
        aid_or_model.build()
    state = read_state_dict(state_dict)
    entries = {k: v for k, v in resnet_entries(aid, "").items() if not k.startswith("fc.")}
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
    accepted = constructor_keys(SSD)
    ssd = {k: v for k, v in config.items() if k in accepted and k not in ("adversarial", "clean_mix")}
    rest = {k: v for k, v in config.items() if k not in ssd and k != "name" and k not in INIT_KEYS}
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
        docs/reference.md#expanding-a-clean-ssd); the AID, ``conv_std`` and the decoder keep their fresh init.
      aid_checkpoint: torchvision's ImageNet ResNet-18 for the AID (fc excluded), loaded after the checkpoint.
    """
    config = resolved_model_config(model_config)
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

"""The model a fresh run starts from, and where its weights come from, in words.

A run starts from the layers' initialisers (with an ImageNet trunk when ``model.backbone_init`` names a VGG16 file),
from a trained SSD (``train.init_from``: K copies of every kernel for RobustDet,
docs/reference.md#expanding-a-clean-ssd), or from the model
``--mode=import`` left in the workdir.  The origin is one line of the start-of-run report (``run_report``).
"""

from __future__ import annotations

import os

import keras

from robustdet_tf.checkpoints import integrity
from robustdet_tf.importers.backbone import start_backbone
from robustdet_tf.models.factory import INIT_KEYS, build_model, is_routed
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.workdir import model_config_dict


def seed_run(config) -> None:
    """Seed Keras, TensorFlow, NumPy and Python from ``config.train.seed`` before a fresh run builds its model.

    Why: the initial weights (and every draw not seeded on its own) then follow the run's seed, so one seed names one
    run and a study over seeds (``bench/phenomenon.py``) varies exactly what it says.  The data order and the
    attacks' draws take ``config.train.seed`` already.
    """
    keras.utils.set_random_seed(int(config.train.get("seed", 0)))


def initial_model(config) -> keras.Model:
    """The model a run starts from: fresh (trunk from ``model.backbone_init``), or ``train.init_from`` (an SSD
    ``.keras`` file) expanded into RobustDet.

    RobustDet is trained from a clean SSD (docs/reference.md#expanding-a-clean-ssd): every convolution's K kernels start
    as copies of the SSD's.
    For an SSD config ``init_from`` simply loads the weights of a compatible model.
    """
    return initial_model_and_origin(config)[0]


def initial_model_and_origin(config) -> tuple[keras.Model, str]:
    """``initial_model`` and where its weights come from, in words (the start-of-run report's line)."""
    init_from = config.train.get("init_from", None)
    backbone_init = str(config.model.get("backbone_init", None) or "none")
    if not init_from:
        model = build_model(config.model)
        loaded = start_backbone(model, backbone_init)
        if loaded == "none":
            return model, f"random: the layers' initialisers, seed {config.train.get('seed', 0)}"
        return model, loaded
    if backbone_init != "none":
        raise ValueError(f"config.train.init_from={init_from!r} and config.model.backbone_init={backbone_init!r} "
                         "both say where the weights start: keep one of them.")
    if not os.path.exists(init_from):
        raise FileNotFoundError(
            f"config.train.init_from={init_from!r} does not exist: give a trained SSD saved as .keras (e.g. "
            "runs/ssd300_voc/model.keras), or import the official checkpoint with --mode=import first"
        )
    how = "K copies of every kernel" if is_routed(config.model) else "its weights copied"
    return model_from_ssd(integrity.load_model_file(init_from), config), f"the trained SSD {init_from} ({how})"


def model_from_ssd(ssd: keras.Model, config) -> keras.Model:
    """The configured model started from a trained SSD: K-fold expansion for RobustDet, a weight copy otherwise."""
    if is_routed(config.model):
        settings = {k: v for k, v in model_config_dict(config).items() if k != "kind" and k not in INIT_KEYS}
        return RobustDet.from_ssd(ssd, **settings)
    model = build_model(config.model)
    model.set_weights(ssd.get_weights())
    return model


IMPORTED_MODEL = "imported_model.keras"


def imported_model(workdir: str, printer=print) -> keras.Model | None:
    """The model ``--mode=import`` left in an untrained workdir (``model.keras`` without checkpoints), kept as
    ``imported_model.keras`` so the trained ``model.keras`` never replaces it; ``None`` if there is none."""
    kept = os.path.join(workdir, IMPORTED_MODEL)
    final = os.path.join(workdir, "model.keras")
    if os.path.exists(final) and not os.path.exists(kept):
        os.replace(final, kept)
    if not os.path.exists(kept):
        return None
    printer(f"starting from the imported model {kept}")
    return integrity.load_model_file(kept)

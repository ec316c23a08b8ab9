"""Pieces shared by the experiment configs: the SSD300 model blocks and the reference training settings.

Each experiment file in this folder returns a complete ``ml_collections.ConfigDict`` from ``get_config()``; absl's
``config_flags`` loads it (``--config=configs/ssd300_voc.py``) and accepts overrides such as
``--config.train.batch_size=8``.  A key that a config does not define is refused by ``config_flags`` itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import ml_collections

from robustdet_tf.analysis.run import DEFAULT_SETTINGS as ANALYSIS_DEFAULTS
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.evaluation.from_config import DEFAULT_ATTACKS
from robustdet_tf.labels import VOC_CLASSES as VOC_CLASS_NAMES
from robustdet_tf.models.adversarial import REFERENCE_TRAINING_ATTACK
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from robustdet_tf.priors import SSD300_COCO, SSD300_VOC, PriorSpec

SSD_KEYS = ("image_size", "width", "extras", "mean", "weight_decay", "match_threshold", "neg_pos_ratio",
            "score_threshold", "pre_nms_top_k", "nms_iou_threshold")
"""The SSD constructor's settings a model config carries with the constructor's defaults."""
ROBUSTDET_KEYS = ("num_kernels", "aid_width", "decoder_width", "aaconv_implementation", "adc", "triplet_margin",
                  "triplet_hinge", "loss_weighting", "aid_weight")
"""RobustDet's own settings a model config carries with the constructor's defaults."""


def constructor_defaults(cls: type, names: Sequence[str]) -> dict[str, Any]:
    """The defaults of ``names`` in the constructors of ``cls`` and its bases: a model default is written once, in
    its constructor, and the configs read it from there (state only what differs)."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.default is not inspect.Parameter.empty:
                found.setdefault(parameter.name, parameter.default)
    missing = [name for name in names if name not in found]
    if missing:
        raise KeyError(f"{cls.__name__}'s constructor has no default for {missing}")
    return {name: found[name] for name in names}


def _prior_keys(spec: PriorSpec) -> dict:
    """The prior keys a model config carries (feature maps follow from the network, image size is its own key)."""
    return {k: getattr(spec, k) for k in PriorSpec.KEYS}


def ssd300_model(dataset: str = "voc", num_classes: int | None = None) -> ml_collections.ConfigDict:
    """SSD300-VGG16 exactly as the reference builds it (docs/reference.md#the-detector).

    ``num_classes=None`` derives the count from ``config.data.class_names`` (background + classes: 21 for VOC);
    ``experiment`` links the model's ``class_names`` to that key, so one flag sets the label map everywhere.
    """
    voc = dataset == "voc"
    return ml_collections.ConfigDict(
        dict(
            kind="ssd",
            num_classes=ml_collections.FieldReference(num_classes, field_type=int),
            backbone_init="none",
            **constructor_defaults(SSD, SSD_KEYS),
            **_prior_keys(SSD300_VOC if voc else SSD300_COCO),
            max_detections=ml_collections.FieldReference(None, field_type=int),
        )
    )


def reference_train(steps: int, lr_steps: tuple[int, ...]) -> ml_collections.ConfigDict:
    """SGD lr 1e-3, momentum 0.9, batch 32, step decay ×0.1 (docs/reference.md#optimiser-and-schedule)."""
    return ml_collections.ConfigDict(
        dict(
            steps=steps,
            batch_size=32,
            learning_rate=1e-3,
            momentum=0.9,
            lr_steps=lr_steps,
            lr_gamma=0.1,
            seed=0,
            log_every=50,
            checkpoint_every=5000,
            keep=2,
            jit_compile=False,
            optimizer="sgd",
            init_from="",
            strategy="auto",
            precision="float32",
        )
    )


def voc_data(train: str = "2007+2012", test: str = "2007") -> ml_collections.ConfigDict:
    """PASCAL VOC through tensorflow-datasets (``source="tfds"``) or a local VOCdevkit (``source="local"``)."""
    return ml_collections.ConfigDict(
        dict(
            dataset="voc",
            source="tfds",
            train_years=train,
            train_split="trainval",
            eval_years=test,
            eval_split="test",
            root=ml_collections.FieldReference(None, field_type=str),
            data_dir=ml_collections.FieldReference(None, field_type=str),
            manual_dir=ml_collections.FieldReference(None, field_type=str),
            download=False,
            class_names=VOC_CLASS_NAMES,
            background_images="keep",
            max_boxes=64,
            augment=True,
            augment_chain="reference",
            skip_bad=False,
            cache=False,
        )
    )


def coco_data() -> ml_collections.ConfigDict:
    """MS-COCO 2017 through tensorflow-datasets or a local ``annotations/`` + image folder."""
    return ml_collections.ConfigDict(
        dict(
            dataset="coco",
            source="tfds",
            train_split="train2017",
            eval_split="val2017",
            root=ml_collections.FieldReference(None, field_type=str),
            image_dir=ml_collections.FieldReference(None, field_type=str),
            data_dir=ml_collections.FieldReference(None, field_type=str),
            manual_dir=ml_collections.FieldReference(None, field_type=str),
            download=False,
            class_names=ml_collections.FieldReference(None, field_type=tuple),
            background_images="drop",
            max_boxes=100,
            augment=True,
            augment_chain="reference",
            skip_bad=False,
            cache=False,
        )
    )


def eval_settings(metric: str = "voc07") -> ml_collections.ConfigDict:
    """Robustness evaluation under the reference protocol (PGD-20, ε = α = 8, DAG-150).

    The default columns are the one-gradient-per-step attacks (clean, A_cls, A_loc, CWA); the rest of Table 1 on
    request: ``--config.eval.attacks="('clean', 'A_cls', 'A_loc', 'con', 'MTD', 'CWA', 'DAG')"``.
    """
    return ml_collections.ConfigDict(
        dict(
            batch_size=8,
            metric=metric,
            voc_offsets="reference",
            protocol="reference",
            overrides={},
            attacks=DEFAULT_ATTACKS,
            sample_images=4,
            sample_score_threshold=0.3,
            sample_top_n=10,
            attack="A_cls",
            attack_images=0,
            shard_batches=8,
            shard_timeout=3600.0,
            strategy="auto",
            # Paired percentile bootstrap over images on every cell and every difference of two models
            # (metrics/bootstrap.py); resamples=0 writes no intervals.
            bootstrap=dict(resamples=1000, seed=0, level=0.95),
            # The model whose A_cls images the 'Transfer' column evaluates every model on; '' = the first model.
            transfer_source="",
            # Per model, the gradient check of A_cls on this many first images (zero and NaN/inf input gradients,
            # the loss along the steps; evaluation/gradient_check.py) in robustness.json; 0 = none.
            gradient_check_images=64,
        )
    )


def analysis_settings(**updates) -> ml_collections.ConfigDict:
    """``--mode=analyze``: which of the paper's diagnostics run, on how many evaluation images, with which attack
    (the evaluation protocol's settings) and loss-conflict optimiser (README 'Configuration keys')."""
    return ml_collections.ConfigDict({**ANALYSIS_DEFAULTS, **updates})


def adversarial(method: str = "mtd") -> ml_collections.ConfigDict:
    """Adversarial-training attack: the ``AttackSpec`` keys (PGD/MTD steps of ε = α = 8, renewed every 20 steps)
    plus ``schedule`` (interleaved, docs/reference.md#adversarial-training).  ``seed`` is left out: it follows
    ``config.train.seed``."""
    attack = REFERENCE_TRAINING_ATTACK if method == REFERENCE_TRAINING_ATTACK.method else AttackSpec(method)
    settings = {k: v for k, v in attack.to_dict().items() if k != "seed"}
    return ml_collections.ConfigDict(dict(settings, con_weights=tuple(settings["con_weights"]), schedule="interleaved"))


def robustdet_model(dataset: str = "voc", num_classes: int | None = None, cfr: bool = False):
    """RobustDet on the SSD300 layout: K = 4 AAconv kernels, the AID, optional CFR, MTD adversarial training."""
    model = ssd300_model(dataset, num_classes)
    model.kind = "robustdet"
    model.cfr = cfr
    model.update(constructor_defaults(RobustDet, ROBUSTDET_KEYS))
    model.adversarial = adversarial("mtd")
    return model


def adversarial_baseline(method: str) -> ml_collections.ConfigDict:
    """A train_adv.py baseline on VOC: plain SSD300, 16 clean + 16 adversarial images per step (``clean_mix``),
    loss_l + loss_c, interleaved PGD-20 / MTD with ε = α = 8 (docs/reference.md#baselines).

    The reference's outer loop runs 20× more optimiser steps than ``max_iter`` (2.4 M for VOC); we count optimiser
    steps, 120k by default.
    """
    model = ssd300_model("voc")
    model.adversarial = adversarial(method)
    model.clean_mix = True
    return experiment(model, voc_data(), reference_train(steps=120_000, lr_steps=(80_000, 100_000, 120_000)),
                      eval_settings("voc07"))


def experiment(model: ml_collections.ConfigDict, data: ml_collections.ConfigDict, train: ml_collections.ConfigDict,
               evaluation: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The four blocks as one config, with ``model.class_names`` a reference to ``data.class_names`` (the label map
    the readers accept is the one the model is built with and saves)."""
    config = ml_collections.ConfigDict()
    config.model, config.data, config.train, config.eval = model, data, train, evaluation
    config.analysis = analysis_settings()
    config.model.class_names = config.data.get_ref("class_names")
    return config

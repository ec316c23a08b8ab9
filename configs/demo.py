"""The embedded demo: a tiny SSD of SSD300's structure on the synthetic shapes set (runs on 2 CPU cores).

``python main.py`` uses this config.  The model keeps every SSD300 component (VGG trunk with ceil-mode pool3,
dilated conv6, L2Norm, extras, multibox heads) at 1/8 of the channels and a 96×96 input with four sources.
"""

import ml_collections

from configs import common
from robustdet_tf.models.robustdet import RobustDet

IMAGE_SIZE = 96
NUM_CLASSES = 4  # object classes of the shapes set used by the demo (circle, square, triangle, ring)
# L∞ budget and step of every attack of the demo, training and evaluation alike (the paper: 8 and 8 on 300×300
# VOC).  Chosen by bench/demo_regime.py (docs/results/regime.md, bench/results/demo_regime.jsonl): on 150 images
# adversarial training of this 1/8-width model does not measurably help at ε = 8 (SSD-AT − SSD under A_cls +0.6
# [−1.3, +3.5] points) and helps by +4.0 [+2.1, +7.6] at ε = 4 and +10.6 [+7.6, +13.7] at ε = 2, the widest margin
# over the noise (on 100 images: +2.9 [+1.5, +8.0] at ε = 4, +5.7 [+3.9, +11.2] at ε = 3).
EPSILON = 2.0
# Evaluation images: 80 (fewer than the search's 100-150, so the intervals are wider) to keep the demo within 10
# minutes.
EVAL_IMAGES = 80


def tiny_ssd_model() -> ml_collections.ConfigDict:
    model = common.ssd300_model("voc", num_classes=NUM_CLASSES + 1)
    model.image_size = IMAGE_SIZE
    model.width = 0.125
    model.extras = ((256, 1, 1, 0), (512, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1))
    model.min_sizes = (10, 22, 40, 62)
    model.max_sizes = (22, 40, 62, 86)
    model.aspect_ratios = ((2,), (2, 3), (2, 3), (2,))
    model.steps = ml_collections.FieldReference(None, field_type=tuple)
    model.max_detections = 100
    return model


def shapes_data() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            dataset="shapes",
            image_size=IMAGE_SIZE,
            num_classes=NUM_CLASSES,
            max_objects=6,
            train_images=4000,
            train_seed=0,
            eval_images=EVAL_IMAGES,
            eval_seed=1,
            max_boxes=8,
            augment=False,
            augment_chain="corrected",
            cache=True,
        )
    )


def demo_adversarial() -> dict:
    """A_cls PGD steps of ε = α = ``EPSILON`` as the reference interleaves them, but the attacked batch is renewed
    every 5 optimiser steps instead of 20: a 400-step demo then sees 80 distinct adversarial batches instead of 20
    (the reference's period is meant for 120k steps).  RobustDet and SSD-AT use the same schedule."""
    adversarial = common.adversarial("cls")
    adversarial.steps = 5
    adversarial.epsilon = adversarial.step_size = EPSILON
    return adversarial.to_dict()


def adversarial_stage_train() -> dict:
    """Optimiser and budget of the RobustDet and SSD-AT stages (both start from the clean SSD)."""
    return dict(steps=400, batch_size=16, learning_rate=3e-4, optimizer="adam", checkpoint_every=200)


REGIME_KEYS = ("epsilon", "adversarial_steps", "width", "eval_images")
"""What ``with_regime`` changes: the levers of the regime search (``bench/mechanism.py``)."""


def with_regime(config: ml_collections.ConfigDict, epsilon: float | None = None,
                adversarial_steps: int | None = None, width: float | None = None,
                eval_images: int | None = None) -> ml_collections.ConfigDict:
    """``config`` (changed in place and returned) at another regime; ``None`` keeps the demo's value.

    ``epsilon``: the L∞ budget and step of the training attack of every adversarial stage and of every evaluation
    PGD alike (α = ε, as the demo); ``adversarial_steps``: the length of every adversarial stage present
    (``robustdet``, ``ssd_at`` and any other section with ``model.adversarial``); ``width``: the channel fraction of
    the detector (the AID and the decoder keep their widths); ``eval_images``: the images of the table and of the
    mechanism diagnostics."""
    with config.unlocked():
        if width is not None:
            config.model.width = float(width)
        if eval_images is not None:
            config.data.eval_images = int(eval_images)
            config.analysis.mechanism_images = int(eval_images)
        for name in config.keys():
            stage = config[name]
            if not isinstance(stage, ml_collections.ConfigDict) or "adversarial" not in stage.get("model", {}):
                continue
            if epsilon is not None:
                stage.model.adversarial["epsilon"] = stage.model.adversarial["step_size"] = float(epsilon)
            if adversarial_steps is not None:
                stage.train["steps"] = int(adversarial_steps)
        if epsilon is not None:
            overrides = config.eval.overrides.to_dict()
            overrides["pgd"] = {**overrides.get("pgd", {}), "epsilon": float(epsilon), "step_size": float(epsilon)}
            config.eval.overrides = overrides
    return config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = tiny_ssd_model()
    config.data = shapes_data()
    # Stage 1: the clean SSD.
    config.train = common.reference_train(steps=1500, lr_steps=())
    config.train.batch_size = 16
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-3
    config.train.log_every = 100
    config.train.checkpoint_every = 500
    # Stage 2: RobustDet expanded from the clean SSD, interleaved A_cls training (8 clean + 8 attacked + 8 adc),
    # Adam at 3e-4 (1e-4 left the AID unseparated after 500 steps; 1e-3 cost clean mAP).
    config.robustdet = ml_collections.ConfigDict(
        dict(
            # RobustDet's settings from its constructor (every key recorded, so a demo workdir compares whole);
            # the demo states only what differs: an AID and a decoder sized for the 1/8-width model.
            model={"kind": "robustdet", **common.constructor_defaults(RobustDet, (*common.ROBUSTDET_KEYS, "cfr")),
                   "aid_width": 8, "decoder_width": 64, "adversarial": demo_adversarial()},
            train=adversarial_stage_train(),
        )
    )
    # Stage 3: SSD-AT(A_cls) from the same clean SSD with the same schedule and budget.
    config.ssd_at = ml_collections.ConfigDict(
        dict(
            model=dict(adversarial=demo_adversarial(), clean_mix=True),
            train=adversarial_stage_train(),
        )
    )
    # Stage 4: robustness evaluation (the reference protocol at ε = α = EPSILON, PGD-10; DAG shortened to 20 steps
    # to fit the budget), every cell with its paired bootstrap interval over the images.
    config.eval = common.eval_settings("voc07")
    # 40: the 80 images in two full batches, so each cell's graph is traced for one batch shape only (tracing and
    # optimising a graph took about as long as running it; 25 left a last batch of 5 and a second trace per cell).
    # The table does not depend on the batch size: every attack treats each image as if alone.
    config.eval.batch_size = 40
    config.eval.voc_offsets = "corrected"
    # "Adaptive": A_cls − λ·KL(π_clean ‖ π_adv), the attack that keeps RobustDet's kernel mixture clean (issue 14);
    # "Transfer": A_cls made against the clean SSD, evaluated on every model (the check for gradient masking).
    config.eval.attacks = ("clean", "A_cls", "A_loc", "CWA", "DAG", "Adaptive", "Transfer")
    # PGD-10 instead of the reference's 20 steps: with α = ε the first step reaches the box's corner, and the demo has
    # to fit in 10 minutes on 2 cores (PGD-20 with every column took 615–679 s there).
    config.eval.overrides = {"pgd": {"steps": 10, "epsilon": EPSILON, "step_size": EPSILON}, "dag": {"steps": 20}}
    config.eval.transfer_source = "ssd"
    # The demo's diagnostics run the gradient check (on 8 images); the table's own check, the Corrupt and Patch
    # columns and the TOG attacks did not fit its 10 minutes (726 s with Corrupt, Patch and the check on 64 images):
    # bench/threat_model.py evaluates the demo's models under them (docs/results/threat-model.md).
    config.eval.gradient_check_images = 0
    config.eval.sample_images = 2
    # The paper's diagnostics (--mode=analyze; the demo runs the cheap ones) on 8 evaluation images (one batch: one
    # trace of each diagnostic's graph), A_cls pairs.
    config.analysis = common.analysis_settings(images=8)
    return config

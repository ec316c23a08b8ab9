"""Our universal patch (``attacks/patch.py``) beside ART's ``RobustDPatch`` run through our ART adapter, on one tiny
detector: the same patch size, the same number of signed steps of the same size on the same training images, scored
on the same held-out images.  Prints ONE JSON line.

Why: a patch attack written by others that fits its patch through ``interop/art.py`` checks two things at once —
that our attack is as strong as a published implementation under the same budget, and that the adapter gives ART
what a patch attack needs (``predict`` for its untargeted labels, ``loss_gradient`` on patched images).

Setup: the tiny SSD of the tests (SSD300's structure at 1/16 of the channels, 64 × 64, three classes) trained for
``--detector_steps`` Adam steps on the tests' synthetic rectangles (``tests/helpers.rectangles``, the colour is the
class); the patches are fitted on ``--fit_images`` other rectangles and scored on ``--eval_images`` held-out ones by
VOC07 mAP (exact coordinates) and by A_cls's loss (``loss_c`` against the ground truth).  RobustDPatch takes one
fixed location, so both are fitted and scored at the centre, with every RobustDPatch transformation switched off
(no crop, rotation or brightness change), one EOT sample and its full-batch step, which is our fit with
``batch_size = fit_images``; both ascend ``loss_c`` (the adapter with ``attack_losses=("loss_c",)``).

What still differs, by design of RobustDPatch (recorded under ``differences``): it is untargeted and takes the
model's own detections on the clean images as the labels, where ours takes the ground truth (so ours is also run
on those detections: ``ours_center_on_detections``); it rounds the images to multiples of ``learning_rate`` before
each gradient (its brightness step, even at brightness 1); its start is integer noise from NumPy's global RNG.
Also listed: a random patch (our fit's start), and our default attack, random placement, fitted and scored.

    python bench/patch_crosscheck.py [--detector_steps 800 --patch_steps 20 --step_size 8 --size 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_record, beside this script

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from run_record import machine, version  # noqa: E402

from robustdet_tf.attacks import objectives  # noqa: E402
from robustdet_tf.attacks.patch import PatchSpec, fit_universal_patch, initial_patch, patch_attack  # noqa: E402
from robustdet_tf.evaluation.evaluate import evaluate_detections, make_metric  # noqa: E402
from robustdet_tf.models.ssd import SSD  # noqa: E402
from tests.conftest import TINY_SSD  # noqa: E402
from tests.helpers import rectangles  # noqa: E402

CLASSES = ("red", "green", "blue")  # tests.helpers.rectangles: the colour of a rectangle is its class


def trained_detector(steps: int, images: int, seed: int) -> SSD:
    """The tiny SSD after ``steps`` Adam steps (3e-3, batches of 16) of the MultiBox loss on shuffled rectangles."""
    keras.utils.set_random_seed(seed)
    model = SSD(**TINY_SSD)
    model.build()
    x, t = rectangles(images, TINY_SSD["image_size"], seed=seed)
    stream = iter(tf.data.Dataset.from_tensor_slices((x, t)).shuffle(images, seed=seed).repeat().batch(16))
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            loss = tf.add_n(model.detection_loss(model(images, training=True), targets))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    for _ in range(steps):
        step(*next(stream))
    return model


def robust_dpatch(model, fit_x: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """ART's RobustDPatch through our adapter, at the centre, every transformation off, one full-batch step per
    iteration on ``loss_c``."""
    from art.attacks.evasion import RobustDPatch

    from robustdet_tf.interop.art import ARTObjectDetector

    np.random.seed(spec.seed)  # RobustDPatch's start (np.random.randint) and its transformation draws (random)
    random.seed(spec.seed)
    side = spec.side(*fit_x.shape[1:3])
    corner = (fit_x.shape[1] - side) // 2
    attack = RobustDPatch(ARTObjectDetector(model, attack_losses=("loss_c",)), patch_shape=(side, side, 3),
                          patch_location=(corner, corner), crop_range=(0, 0), brightness_range=(1.0, 1.0),
                          rotation_weights=(1, 0, 0, 0), sample_size=1, learning_rate=spec.step_size,
                          max_iter=spec.steps, batch_size=len(fit_x), targeted=False, verbose=False)
    patch = attack.generate(fit_x)
    ours = patch_attack(patch, spec)(model, tf.constant(fit_x), {})
    if not np.array_equal(ours.numpy(), attack.apply_patch(fit_x, patch).astype(np.float32)):
        raise AssertionError("our centre placement and RobustDPatch's patch_location paste the patch differently")
    return patch


def model_detections(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """The model's own detections on ``images`` as targets (what untargeted RobustDPatch ascends against)."""
    from robustdet_tf.interop.art import ARTObjectDetector, targets_from_art

    size = images.shape[1]
    converted = targets_from_art(ARTObjectDetector(model).predict(images, batch_size=len(images)), size, size)
    return {k: v.numpy() for k, v in converted.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector_steps", type=int, default=800)
    parser.add_argument("--detector_images", type=int, default=512)
    parser.add_argument("--fit_images", type=int, default=32)
    parser.add_argument("--eval_images", type=int, default=64)
    parser.add_argument("--patch_steps", type=int, default=20)
    parser.add_argument("--step_size", type=float, default=8.0)
    parser.add_argument("--size", type=float, default=0.25, help="patch side / image side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import art

    size = TINY_SSD["image_size"]
    model = trained_detector(args.detector_steps, args.detector_images, args.seed)
    fit_x, fit_t = rectangles(args.fit_images, size, seed=args.seed + 5)
    eval_x, eval_t = rectangles(args.eval_images, size, seed=args.seed + 9)
    spec = PatchSpec(size=args.size, steps=args.patch_steps, step_size=args.step_size, objective="cls",
                     placement="center", seed=args.seed, batch_size=args.fit_images)
    side = spec.side(size, size)
    fit = lambda targets, spec: fit_universal_patch(  # noqa: E731
        model, tf.data.Dataset.from_tensor_slices((fit_x, targets)).batch(args.fit_images), spec)
    patches = {
        "random_patch_center": (initial_patch(spec, side), spec),
        "ours_center": (fit(fit_t, spec), spec),
        "ours_center_on_detections": (fit(model_detections(model, fit_x), spec), spec),
        "art_robust_dpatch_center": (robust_dpatch(model, fit_x, spec), spec),
        "ours_random_placement": (fit(fit_t, spec.replace(placement="random")), spec.replace(placement="random")),
    }

    eval_batches = tf.data.Dataset.from_tensor_slices((eval_x, eval_t)).batch(16)
    x, t = tf.constant(eval_x), {k: tf.constant(v) for k, v in eval_t.items()}
    cls = objectives.make_objective("cls")
    mean_ap, cls_loss = {}, {}
    for name, attack in [("clean", None)] + [(n, patch_attack(p, s)) for n, (p, s) in patches.items()]:
        result = evaluate_detections(model, eval_batches, make_metric("voc07", CLASSES, offsets="corrected"), attack)
        mean_ap[name] = round(float(result["mAP"]), 4)
        cls_loss[name] = round(float(cls(model, x if attack is None else attack(model, x, t), t)), 4)

    record = {
        "benchmark": "patch_crosscheck",
        "version": version(),
        "machine": machine(),
        "tensorflow": tf.__version__,
        "art": art.__version__,
        "model": "tiny SSD (tests.conftest.TINY_SSD: SSD300 structure, 1/16 channels, 64x64, 3 classes)",
        "detector": {"steps": args.detector_steps, "images": args.detector_images, "optimizer": "Adam 3e-3",
                     "batch": 16, "data": f"tests.helpers.rectangles, seed {args.seed}"},
        "settings": {"patch_side_px": side, "patch_area_fraction": round(side * side / size**2, 4),
                     "steps": args.patch_steps, "step_size_px": args.step_size, "fit_images": args.fit_images,
                     "full_batch_steps": True, "objective": "loss_c (A_cls)", "eval_images": args.eval_images,
                     "metric": "voc07, exact coordinates", "ours": spec.to_dict(),
                     "robust_dpatch": {"patch_location": [(size - side) // 2] * 2, "crop_range": [0, 0],
                                       "brightness_range": [1.0, 1.0], "rotation_weights": [1, 0, 0, 0],
                                       "sample_size": 1, "learning_rate": args.step_size,
                                       "max_iter": args.patch_steps, "batch_size": args.fit_images,
                                       "attack_losses": ["loss_c"], "targeted": False}},
        "map": mean_ap,
        "cls_loss": cls_loss,
        "differences": ["RobustDPatch (untargeted) ascends against the model's detections on the clean images, ours "
                        "against the ground truth (ours_center_on_detections uses the detections too)",
                        "RobustDPatch rounds the images to multiples of learning_rate before each gradient",
                        "starts: ours stateless uniform noise from the seed, RobustDPatch integer noise from "
                        "np.random"],
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()

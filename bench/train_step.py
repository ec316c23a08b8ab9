"""RobustDet's training step against the same work done by the plain SSD, and where the step's time goes.

Measured side by side in one process at 300×300, 21 classes, K = 4, ``adc`` = B, one PGD step on the held batch a
step (the reference's interleaved schedule, A_cls): for each batch B

* ``ssd_forward`` / ``robustdet_forward`` — test-mode forward of B images;
* ``ssd_pgd_step`` / ``robustdet_pgd_step`` — one signed-gradient step on B images (``attacks.pgd.pgd_step``);
* ``ssd_train_3b`` — the SSD's training step (forward, MultiBox, backward, SGD) on 3B images;
* ``robustdet_step`` — RobustDet's whole step: the PGD step on the held batch, B clean + B attacked + B ``adc``
  images forward and backward, Eq. 5, SGD;
* ``step_over_bound`` = ``robustdet_step`` ÷ (``ssd_pgd_step`` + ``ssd_train_3b``): the SSD-equivalent work (the AID
  adds about 0.11× of an SSD forward, so ≈ 1.12 is the floor);
* the breakdown of RobustDet's step, each part timed alone: the AID forward of 2B images, the AAconv detector's
  forward on 3B images with a given mixture, and the losses' forward + backward without the optimiser.

Every timed function is a ``tf.function``, warmed up twice (the second call of a fresh step still pays for first
allocations: 19.5 s against 11 s at batch 2), then the repeats are interleaved and the median kept.  Prints ONE
JSON line (seconds, ratios, peak RSS in MB).  ``--cfr`` adds the same step with CFR as extra keys; ``--fold-ab``
adds RobustDet's forward, PGD step and whole step with the detector run layer by layer (``*_layer_by_layer``, the
batch transposed in and out of every grouped AAconv) beside the folded default (``models/detector.py``).

    python bench/train_step.py [--batches 2 8] [--repeats 3] [--cfr] [--fold-ab]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from robustdet_tf.attacks.pgd import pgd_step  # noqa: E402
from robustdet_tf.attacks.spec import AttackSpec  # noqa: E402
from robustdet_tf.models.robustdet import RobustDet  # noqa: E402
from robustdet_tf.models.ssd import SSD  # noqa: E402

SIZE, CLASSES, KERNELS = 300, 21, 4
ATTACK = AttackSpec("cls", epsilon=8.0, step_size=8.0, steps=20)
ADVERSARIAL = {**ATTACK.to_dict(), "schedule": "interleaved"}


def batch_of(n: int, seed: int):
    """``n`` random images with two boxes each (labels 1 and 7)."""
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32))
    boxes = np.tile(np.array([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]], np.float32), (n, 1, 1))
    labels = np.tile(np.array([1, 7], np.int32), (n, 1))
    return images, {"boxes": tf.constant(boxes), "labels": tf.constant(labels)}


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    result = fn()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)
    return time.perf_counter() - start


def layer_by_layer(model: RobustDet) -> RobustDet:
    """``model`` with its detector's folded path switched off (every grouped AAconv transposes its batch)."""
    model.detector._runs_folded = lambda pi, return_features: False
    return model


def functions_for(batch: int, cfr: bool, fold_ab: bool = False) -> dict[str, Callable[[], object]]:
    """name → a warmed-up-able call without arguments."""
    images, targets = batch_of(batch, 0)
    triple, triple_targets = batch_of(3 * batch, 1)
    keras.utils.set_random_seed(0)
    ssd = SSD(num_classes=CLASSES, image_size=SIZE)
    ssd.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9))
    robustdet = RobustDet.from_ssd(ssd, num_kernels=KERNELS, adc=batch, cfr=cfr, adversarial=ADVERSARIAL)
    robustdet.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9))
    pi_3b = tf.fill([3 * batch, KERNELS], 1.0 / KERNELS)
    two = tf.concat([images, images], 0)

    ssd_train = tf.function(lambda: ssd.train_step((triple, triple_targets)))
    rd_train = tf.function(lambda: robustdet.train_step(((images, targets), (images, targets))))

    def losses_forward_backward():
        with tf.GradientTape() as tape:
            out = robustdet(triple, training=True)
            loss_l, loss_c = robustdet.detection_loss(out, triple_targets, global_norm=True)
            loss = loss_l + loss_c + tf.reduce_sum(out["pi"])
        return tape.gradient(loss, robustdet.trainable_variables)

    extra = {}
    if fold_ab:
        plain = layer_by_layer(RobustDet.from_ssd(ssd, num_kernels=KERNELS, adc=batch, cfr=cfr,
                                                  adversarial=ADVERSARIAL))
        plain.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9))
        extra = {
            "robustdet_forward_layer_by_layer": tf.function(lambda: plain(images, training=False)["logits"]),
            "robustdet_pgd_step_layer_by_layer": tf.function(lambda: pgd_step(plain, images, images, targets, ATTACK)),
            "robustdet_step_layer_by_layer": tf.function(
                lambda: plain.train_step(((images, targets), (images, targets)))),
        }
    return {
        **extra,
        "ssd_forward": tf.function(lambda: ssd(images, training=False)["logits"]),
        "robustdet_forward": tf.function(lambda: robustdet(images, training=False)["logits"]),
        "ssd_pgd_step": tf.function(lambda: pgd_step(ssd, images, images, targets, ATTACK)),
        "robustdet_pgd_step": tf.function(lambda: pgd_step(robustdet, images, images, targets, ATTACK)),
        "ssd_train_3b": ssd_train,
        "robustdet_step": rd_train,
        "part_aid_forward_2b": tf.function(lambda: robustdet.aid(robustdet.preprocess(two), training=True)),
        "part_detector_forward_3b_given_pi": tf.function(
            lambda: robustdet(triple, pi=pi_3b, training=True)["logits"]),
        "part_losses_forward_backward_3b": tf.function(losses_forward_backward),
    }


def measure(batch: int, repeats: int, cfr: bool, fold_ab: bool = False) -> dict[str, float]:
    functions = functions_for(batch, cfr, fold_ab)
    for fn in functions.values():
        seconds(fn)  # trace
        seconds(fn)  # and warm up
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            times[name].append(seconds(fn))
    del functions
    keras.backend.clear_session()  # the next batch's models start from a free heap (batch 8 peaks near 22 GB)
    gc.collect()
    return {name: statistics.median(values) for name, values in times.items()}


def report(batch: int, median: dict[str, float], suffix: str = "") -> dict[str, float]:
    bound = median["ssd_pgd_step"] + median["ssd_train_3b"]
    out = {f"{name}_b{batch}{suffix}_s": round(value, 4) for name, value in median.items()}
    out[f"robustdet_over_ssd_forward_b{batch}{suffix}"] = round(median["robustdet_forward"] / median["ssd_forward"], 3)
    out[f"ssd_equivalent_work_b{batch}{suffix}_s"] = round(bound, 4)
    out[f"step_over_bound_b{batch}{suffix}"] = round(median["robustdet_step"] / bound, 3)
    for part in ("part_aid_forward_2b", "part_detector_forward_3b_given_pi", "part_losses_forward_backward_3b",
                 "robustdet_pgd_step"):
        out[f"{part}_share_of_step_b{batch}{suffix}"] = round(median[part] / median["robustdet_step"], 3)
    for name in ("robustdet_forward", "robustdet_pgd_step", "robustdet_step"):
        if f"{name}_layer_by_layer" in median:
            out[f"{name}_folded_over_layer_by_layer_b{batch}{suffix}"] = round(
                median[name] / median[f"{name}_layer_by_layer"], 3)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cfr", action="store_true", help="also measure the step with CFR (extra keys)")
    parser.add_argument("--fold-ab", action="store_true",
                        help="also measure RobustDet with its detector run layer by layer (extra keys)")
    args = parser.parse_args(argv)
    record: dict[str, object] = {"bench": "train_step", "image_size": SIZE, "num_classes": CLASSES,
                                 "num_kernels": KERNELS, "repeats": args.repeats,
                                 "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    for batch in args.batches:
        record.update(report(batch, measure(batch, args.repeats, cfr=False, fold_ab=args.fold_ab)))
        if args.cfr:
            record.update(report(batch, measure(batch, args.repeats, cfr=True), suffix="_cfr"))
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()

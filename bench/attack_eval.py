"""Throughput of attacked evaluation (A_cls PGD + detection) at SSD300 size: batched vs one image at a time.

The reference evaluates with batch size 1 (eval_attack.py); this package attacks and detects whole batches in one
``tf.function``.  This benchmark measures both on the same images in the same run and prints ONE JSON line.

What is timed: ``evaluation.evaluate.detection_step`` (the compiled function ``evaluate_detections`` calls per
batch) with the A_cls attack of the reference protocol (ε = α = 8, no random start) on a full-width SSD300 with
random weights; the metric's NumPy accumulation is not included.  Each variant is traced and run once before
timing; then the timed rounds alternate (batched, single, batched, ...) so that load from other processes on a
shared machine hits both alike, and the median round is reported.  PGD-20 on CPU is slow, so the default is
``--steps 1`` (said in the JSON as ``pgd_steps``); the ratio batched / single is what the benchmark is for.

    python bench/attack_eval.py [--images 8 --batch 8 --steps 1 --repeats 2 --size 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from robustdet_tf.attacks.pgd import pgd  # noqa: E402
from robustdet_tf.attacks.spec import AttackSpec  # noqa: E402
from robustdet_tf.evaluation.evaluate import detection_step  # noqa: E402
from robustdet_tf.models.ssd import SSD  # noqa: E402


def _inputs(num_images: int, size: int):
    """Random pixel images with one or two random ground-truth boxes each (padded to 2)."""
    images = tf.random.stateless_uniform([num_images, size, size, 3], [0, 1], 0.0, 255.0)
    corner = tf.random.stateless_uniform([num_images, 2, 2], [0, 2], 0.0, 0.5)
    extent = tf.random.stateless_uniform([num_images, 2, 2], [0, 3], 0.2, 0.5)
    boxes = tf.concat([corner, corner + extent], axis=-1)
    labels = tf.random.stateless_uniform([num_images, 2], [0, 4], 0, 20, dtype=tf.int32)
    labels = tf.where(tf.range(2)[None, :] < 1 + tf.range(num_images)[:, None] % 2, labels, -1)
    return images, {"boxes": boxes, "labels": labels}


def _run(step, images, targets, batch: int) -> float:
    """Seconds to attack + detect all images in batches of ``batch`` (results fetched to the host)."""
    start = time.perf_counter()
    for lo in range(0, int(images.shape[0]), batch):
        detections, _ = step(images[lo : lo + batch], {k: v[lo : lo + batch] for k, v in targets.items()})
        detections["num_detections"].numpy()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1, help="PGD steps (the reference protocol uses 20)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per variant")
    parser.add_argument("--size", type=int, default=300)
    args = parser.parse_args(argv)
    if args.images % args.batch:
        parser.error(f"--images ({args.images}) must be a multiple of --batch ({args.batch}) for a fair comparison")

    model = SSD(image_size=args.size)
    model.build()
    images, targets = _inputs(args.images, args.size)
    attack = partial(pgd, spec=AttackSpec("cls", epsilon=8.0, step_size=8.0, steps=args.steps))
    step = detection_step(model, attack)

    warmup = {}
    for name, batch in (("batched", args.batch), ("single", 1)):
        start = time.perf_counter()
        step(images[:batch], {k: v[:batch] for k, v in targets.items()})[0]["num_detections"].numpy()
        warmup[name] = time.perf_counter() - start

    times = {"batched": [], "single": []}
    for _ in range(args.repeats):
        times["batched"].append(_run(step, images, targets, args.batch))
        times["single"].append(_run(step, images, targets, 1))
    seconds = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "benchmark": "attack_eval",
        "attack": "A_cls",
        "pgd_steps": args.steps,
        "pgd_steps_reference_protocol": 20,
        "note": (f"PGD-{args.steps} instead of PGD-20 to keep the run short on CPU; per-image cost scales ~linearly "
                 "with the steps" if args.steps != 20 else "reference PGD-20"),
        "model": "SSD300-VGG16 (random weights)" if args.size == 300 else f"SSD{args.size} (random weights)",
        "params": int(model.count_params()),
        "image_size": args.size,
        "images": args.images,
        "repeats": args.repeats,
        "batched_batch_size": args.batch,
        "batched_images_per_s": args.images / seconds["batched"],
        "single_images_per_s": args.images / seconds["single"],
        "speedup_batched_over_single": seconds["single"] / seconds["batched"],
        "seconds": seconds,
        "warmup_seconds_incl_trace": warmup,
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""Images per second of the input pipeline on the synthetic shapes set, measured side by side in one run.

Prints ONE JSON line with, for the demo size and for 300x300:

* ``generation_<S>``: generating the synthetic examples alone (``shapes_dataset``, images batched so that the
  per-element Python overhead of iteration does not count);
* ``train_<S>``: the full training pipeline on that source (drop difficult, per-epoch shuffle, SSD augmentation
  in its reference form, resize to S, pad targets, batch), i.e. what ``model.fit`` consumes;
* ``train_noaug_<S>``: the same pipeline with augmentation off (only the resize), to show the augmentation's cost.

Each figure is the median over ``--repeats`` interleaved measurements of images / second over ``--seconds`` of
iteration (fresh iterator, after a warm-up batch); the pipeline runs with
``num_parallel_calls=AUTOTUNE`` on however many cores the machine gives it (reported as ``cpu_count``).  On a
machine shared with other work the absolute numbers move; the ratios between lines of one run are the useful part.

    python bench/data_throughput.py [--demo_size 96 --batch_size 16 --seconds 3 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from robustdet_tf.data import pipeline  # noqa: E402
from robustdet_tf.data.shapes import shapes_dataset  # noqa: E402


def images_per_second(dataset: tf.data.Dataset, seconds: float) -> float:
    """Iterate a batched ``(images, ...)`` dataset for about ``seconds`` after one warm-up batch; images / s."""
    iterator = iter(dataset)
    next(iterator)  # warm-up: tracing, thread pools, first shuffle-buffer fill
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        element = next(iterator)
        count += int(element[0].shape[0])
    return count / (time.perf_counter() - start)


def pipelines(size: int, args: argparse.Namespace) -> dict[str, tf.data.Dataset]:
    # Enough distinct images that no measurement wraps around to a repeated epoch.
    source = shapes_dataset(100_000, size, seed=0)
    generated = source.map(lambda example: (example["image"], example["labels"][:1])).batch(args.batch_size)
    named = {f"generation_{size}": generated.prefetch(tf.data.AUTOTUNE)}
    for name, augment_examples in ((f"train_{size}", True), (f"train_noaug_{size}", False)):
        named[name] = pipeline.train_batches(
            source,
            image_size=size,
            batch_size=args.batch_size,
            seed=0,
            max_boxes=args.max_boxes,
            shuffle_buffer=args.shuffle_buffer,
            augment_examples=augment_examples,
            chain="reference",
        )
    return named


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_boxes", type=int, default=8)
    parser.add_argument("--shuffle_buffer", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    report = {
        "benchmark": "data_throughput",
        "unit": "images/s",
        "cpu_count": os.cpu_count(),
        "batch_size": args.batch_size,
        "tensorflow": tf.__version__,
    }
    named = {**pipelines(args.demo_size, args), **pipelines(300, args)}
    samples: dict[str, list[float]] = {name: [] for name in named}
    for _ in range(args.repeats):  # interleaved repeats: load from other processes hits every line alike
        for name, dataset in named.items():
            samples[name].append(images_per_second(dataset, args.seconds))
    report.update({name: round(statistics.median(values), 1) for name, values in samples.items()})
    print(json.dumps(report))


if __name__ == "__main__":
    main()

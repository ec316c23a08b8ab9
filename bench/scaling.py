"""Training steps per second at 1 and 2 replicas, measured side by side in one run (issue 13's scaling benchmark).

The CPU is split into two logical devices (``tf.config.set_logical_device_configuration``) and a tiny SSD-AT
(interleaved A_cls adversarial training, SSD300 structure at 1/16 of the channels, 64×64) is trained with the same
global batch under ``MirroredStrategy`` over one and over two of them.  Each configuration runs in its own fresh
process (logical devices must be set before TensorFlow starts), alternating, and the figure is the median of
``--repeats``.  Prints ONE JSON line: ``steps_per_s_1_replica``, ``steps_per_s_2_replicas`` and their ratio.

On a 2-core machine the two replicas share the same two cores, so the ratio shows the distribution overhead rather
than a speed-up; on a machine with one GPU per replica it shows the scaling.

The evaluation figures (``eval_images_per_s_1_worker``, ``eval_images_per_s_2_workers``, ``eval_ratio_2_over_1``)
time the sharded robustness table (``evaluation.sharded``; tiny SSD, clean + A_cls PGD-``--eval_pgd_steps``) over the
same ``--eval_images`` images by one process and by two ``TF_CONFIG`` worker processes on localhost, each computing its
own shards into one folder, the chief merging them.  The clock runs from a barrier that all workers reach after
importing TensorFlow and loading the model, to the chief's finished table (its wait for the other worker included).

    python bench/scaling.py [--steps 20 --batch_size 8 --repeats 3 --eval_images 96 --eval_repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from eval_scaling import eval_images_per_second

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import sys, time
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
replicas, steps, batch = (int(v) for v in sys.argv[1:4])
strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
from robustdet_tf.data import pipeline
from robustdet_tf.data.shapes import shapes_dataset
from robustdet_tf.models.ssd import SSD
from robustdet_tf.models.training import sgd
from tests.conftest import TINY_SSD

source = shapes_dataset(64, image_size=64, seed=0, num_classes=4)
streams = pipeline.two_streams(source, seed=0, image_size=64, batch_size=batch // 2, max_boxes=6,
                               augment_examples=False, shuffle_buffer=8).repeat()
with strategy.scope():
    model = SSD(**{**TINY_SSD, "num_classes": 5}, adversarial={"method": "cls", "steps": 4}, clean_mix=True)
    model.build()
    model.compile(optimizer=sgd(1e-3))
    model.optimizer.build(model.trainable_variables)
model.fit(streams, steps_per_epoch=3, epochs=1, verbose=0)  # tracing and warm-up
start = time.perf_counter()
model.fit(streams, steps_per_epoch=steps, epochs=1, verbose=0)
print("RATE", steps / (time.perf_counter() - start))
"""


def steps_per_second(replicas: int, steps: int, batch_size: int) -> float:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(replicas), str(steps), str(batch_size)], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return float(next(line for line in proc.stdout.splitlines() if line.startswith("RATE")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8, help="global batch (clean + attacked halves)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval_images", type=int, default=96)
    parser.add_argument("--eval_batch_size", type=int, default=8)
    parser.add_argument("--eval_shard_batches", type=int, default=2)
    parser.add_argument("--eval_pgd_steps", type=int, default=5)
    parser.add_argument("--eval_repeats", type=int, default=2)
    args = parser.parse_args()
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for replicas in (1, 2):  # alternating, so drifts of a shared machine hit both
            rates[replicas].append(steps_per_second(replicas, args.steps, args.batch_size))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    eval_rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.eval_repeats):
            for workers in (1, 2):
                eval_rates[workers].append(eval_images_per_second(
                    workers, os.path.join(scratch, f"{repeat}_{workers}"), args.eval_images, args.eval_batch_size,
                    args.eval_shard_batches, args.eval_pgd_steps))
    eval_one, eval_two = statistics.median(eval_rates[1]), statistics.median(eval_rates[2])
    print(json.dumps({
        "benchmark": "scaling", "model": "tiny SSD-AT (interleaved A_cls), 64x64", "global_batch": args.batch_size,
        "steps": args.steps, "repeats": args.repeats, "cpu_count": os.cpu_count(),
        "steps_per_s_1_replica": round(one, 3), "steps_per_s_2_replicas": round(two, 3),
        "ratio_2_over_1": round(two / one, 3),
        "evaluation": f"tiny SSD, clean + A_cls (PGD-{args.eval_pgd_steps}), {args.eval_images} images of 64x64, "
                      f"batch {args.eval_batch_size}, {args.eval_shard_batches} batches a shard",
        "eval_repeats": args.eval_repeats, "evaluation_images_per_s": round(eval_one, 2),
        "eval_images_per_s_1_worker": round(eval_one, 2), "eval_images_per_s_2_workers": round(eval_two, 2),
        "eval_ratio_2_over_1": round(eval_two / eval_one, 3),
    }))


if __name__ == "__main__":
    main()

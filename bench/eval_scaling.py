"""Images/s of the sharded robustness evaluation by 1 or 2 ``TF_CONFIG`` worker processes (used by ``scaling.py``).

Every worker process (with ``cpu_count / workers`` intra-op threads, as workers packed on one host would be given)
builds the same tiny SSD (seeded), warms up (traces the cells' steps on two batches, into a
scratch folder, as worker 0 of 1), waits at a file barrier until every worker is ready, then evaluates its shards of
the table into the shared folder; the chief's time to its finished table (its wait for the other worker included)
gives images/s.  The warm-up reuses the traced steps (the cells' attacks and steps are cached per process), so the
figure is the steady state of a long evaluation, not tracing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from robustdet_tf.distribution import local_cluster  # noqa: E402

CHILD = """
import functools, os, sys, time
import keras, numpy as np, tensorflow as tf
from robustdet_tf.evaluation import robustness, sharded
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles

folder, barrier, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
num_images, batch, shard_batches, steps = (int(v) for v in sys.argv[4:8])
tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // workers))  # packed on 1 host
keras.utils.set_random_seed(0)
model = SSD(**TINY_SSD, pre_nms_top_k=100, max_detections=50)
images, targets = rectangles(num_images, 64, seed=0)
targets.update(difficult=np.zeros_like(targets["labels"], bool), original_size=np.full((num_images, 2), 64, np.int32))
batches = tf.data.Dataset.from_tensor_slices((images, targets)).batch(batch)
attack_cache, column_attack = {}, robustness.column_attack
robustness.column_attack = lambda name, proto, cols, m: attack_cache.setdefault(
    (name, repr(proto), tuple(cols), id(m)), column_attack(name, proto, cols, m))
step_cache, batch_step = {}, robustness.batch_step
robustness.batch_step = lambda m, a, s=None: step_cache.setdefault((id(m), id(a), id(s)), batch_step(m, a, s))
table = functools.partial(robustness.evaluate_robustness, {"tiny": model}, attacks=("clean", "A_cls"),
                          class_names=("red", "green", "blue"), overrides={"pgd": {"steps": steps}}, plots=False,
                          shard_batches=shard_batches)
me = sharded.Workers.from_environment()
table(batches=batches.take(2), output_dir=f"{barrier}/warmup{me.index}", workers=sharded.Workers())
open(f"{barrier}/ready{me.index}", "w").close()
while sum(name.startswith("ready") for name in os.listdir(barrier)) < workers:
    time.sleep(0.05)
start = time.perf_counter()
results = table(batches=batches, output_dir=folder, shard_timeout=600)
if results is not None:
    assert results["num_images"] == num_images, results["num_images"]
    print("RATE", num_images / (time.perf_counter() - start), flush=True)
"""


def eval_images_per_second(workers: int, scratch: str, num_images: int, batch_size: int, shard_batches: int,
                           pgd_steps: int) -> float:
    """Images/s of the clean + A_cls table over ``num_images`` images by ``workers`` processes (see the module)."""
    barrier = os.path.join(scratch, "barrier")
    os.makedirs(barrier, exist_ok=True)
    cluster = local_cluster(workers)
    procs = []
    for index in range(workers):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
        env.pop("TF_CONFIG", None)
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        args = [os.path.join(scratch, "table"), barrier, workers, num_images, batch_size, shard_batches, pgd_steps]
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [p.communicate(timeout=1800) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(err[-3000:])
    return float(next(line for line in outputs[0][0].splitlines() if line.startswith("RATE")).split()[1])

"""Sharded evaluation across processes and devices: two ``TF_CONFIG`` worker processes on localhost evaluate into
one folder and the chief's table equals one process's; two logical CPUs under ``MirroredStrategy`` give the
one-device table.  Subprocesses: ``TF_CONFIG`` and logical devices must be set before TensorFlow starts."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from robustdet_tf.distribution import local_cluster
from tests.evaluation.test_sharded import assert_table_is_reference, setup  # noqa: F401 (the fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow  # subprocesses that are themselves under test; the quick loop leaves them out

PRELUDE = """
import json, sys
import keras
from robustdet_tf.evaluation import robustness
from robustdet_tf.evaluation.table_spec import TableRun, TableSpec
from tests.evaluation.test_robustness import CLASS_NAMES, SIZE, rectangles
from tests.evaluation.test_sharded import ATTACKS, NUM_IMAGES, QUICK, eval_batches
images, targets = rectangles(NUM_IMAGES, SIZE, seed=3)
batches = eval_batches(images, targets)
"""

WORKER = PRELUDE + """
model_path, output_dir, out = sys.argv[1:4]
model = keras.saving.load_model(model_path)
results = robustness.evaluate_robustness({"m": model}, batches, CLASS_NAMES, output_dir,
                                         TableSpec(attacks=ATTACKS, overrides=QUICK, plots=False, shard_batches=1,
                                                   shard_timeout=300))
json.dump(results, open(out, "w"))
print("DONE", results is not None, flush=True)
"""

REPLICAS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + PRELUDE + """
model_path, output_dir, out = sys.argv[1:4]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = keras.saving.load_model(model_path)
traced, run = [], strategy.run
strategy.run = lambda fn, args=(), kwargs=None, options=None: traced.append(1) or run(fn, args, kwargs, options)
results = robustness.evaluate_robustness({"m": model}, batches, CLASS_NAMES, output_dir,
                                         TableSpec(attacks=ATTACKS, overrides=QUICK, plots=False, shard_batches=2),
                                         TableRun(strategy=strategy))
json.dump({"replicas": strategy.num_replicas_in_sync, "traced": len(traced), "results": results}, open(out, "w"))
"""


def _start(script, args, tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], cwd=ROOT, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_worker_processes_make_the_one_process_table(setup, tmp_path):  # noqa: F811
    _, _, reference, model_path = setup
    cluster = local_cluster(2)
    workers = [_start(WORKER, [model_path, tmp_path / "table", tmp_path / f"worker{i}.json"],
                      {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-4000:]
    assert "DONE True" in outputs[0][0] and "DONE False" in outputs[1][0]
    chief = json.loads((tmp_path / "worker0.json").read_text())
    assert_table_is_reference(chief, reference)
    assert json.loads((tmp_path / "table" / "robustness.json").read_text()) == chief
    assert json.loads((tmp_path / "worker1.json").read_text()) is None


def test_two_replicas_make_the_one_device_table(setup, tmp_path):  # noqa: F811
    """Batches of 3, 3, 3, 2 split 2 + 1 and 1 + 1 over two logical CPUs; the detections come back in image order
    and the table is the one-device table exactly (the detectors are per-image independent in inference mode)."""
    _, _, reference, model_path = setup
    proc = _start(REPLICAS, [model_path, tmp_path / "table", tmp_path / "out.json"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["replicas"] == 2 and out["traced"] >= 2  # both cells ran through strategy.run
    assert_table_is_reference(out["results"], reference)

"""A resume under several replicas continues every replica's held adversarial batch (``models/held_batches.py``).

Runs in a subprocess: the CPU is split into two logical devices, which must happen before TensorFlow initialises.
SSD-AT's interleaved schedule renews its held batch every 3 steps; the runs stop after step 2 (mid-period), so the
resumed steps 3 attack the held batch, not a fresh one.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from robustdet_tf import train as train_lib
    from robustdet_tf.distribution import make_strategy
    from tests.test_train import tiny_config

    root = sys.argv[1]

    def config(steps):
        c = tiny_config({"method": "cls", "steps": 3})
        c.train.update(steps=steps, batch_size=8, checkpoint_every=2)
        c.data.augment = False
        return c

    def train(workdir, strategies, stops):
        trainer = None
        for name, steps in zip(strategies, stops):
            keras.utils.set_random_seed(0)
            trainer = train_lib.Trainer(config(steps), f"{root}/{workdir}", strategy=make_strategy(name))
            trainer.run(printer=lambda *_: None)
        return [w.numpy() for w in trainer.model.weights]

    def diff(a, b):
        return max(float(np.abs(x - y).max()) for x, y in zip(a, b))

    result = {}
    straight = train("straight", ["mirrored"], [4])
    result["resumed_on_2"] = diff(straight, train("resumed", ["mirrored", "mirrored"], [2, 4]))
    result["one_then_2"] = diff(straight, train("one_then_two", ["one_device", "mirrored"], [2, 4]))
    train_lib.held_batches_of = lambda *_: None  # the old behaviour: every replica resumes replica 0's batch
    result["without"] = diff(straight, train("without", ["mirrored", "mirrored"], [2, 4]))
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.slow
def test_resume_under_two_replicas_continues_each_replicas_held_batch(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])
    assert result["resumed_on_2"] < 1e-5, result  # interrupted + resumed on 2 replicas = uninterrupted
    assert result["one_then_2"] < 1e-5, result  # saved on one device, resumed on 2 = 2 replicas throughout
    assert result["without"] > 1e-4, result  # without the global held batch the resumed run differs

"""distribution.replica_seed: Keras' own draw on one device, a distinct draw on each replica of a strategy."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.attacks.budget import random_start
from robustdet_tf.distribution import replica_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_device_draws_are_keras_own():
    mine, theirs = keras.random.SeedGenerator(7), keras.random.SeedGenerator(7)
    for _ in range(2):  # the generator advances as Keras' does
        np.testing.assert_array_equal(tf.random.stateless_normal([3, 5], replica_seed(mine)),
                                      keras.random.normal([3, 5], seed=theirs))
    np.testing.assert_array_equal(tf.random.stateless_uniform([4], replica_seed(11), -2.0, 2.0),
                                  keras.random.uniform([4], -2.0, 2.0, seed=11))
    images = tf.fill([2, 4, 4, 3], 100.0)
    np.testing.assert_array_equal(random_start(images, 8.0, 5),
                                  images + keras.random.uniform([2, 4, 4, 3], -8.0, 8.0, seed=5))


SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from robustdet_tf.distribution import replica_seed
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        generator = keras.random.SeedGenerator(7)
    fn = tf.function(lambda: strategy.run(lambda: tf.random.stateless_normal([4], replica_seed(generator))))
    draws = [t.numpy().tolist() for t in strategy.experimental_local_results(fn())]
    print("RESULT" + json.dumps({"draws": draws, "first": keras.random.normal([4], seed=7).numpy().tolist()}))
    """
)


def test_each_replica_draws_its_own_noise_and_replica_zero_keras_own():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])
    first, second = result["draws"]
    assert first == result["first"]  # replica 0: the one-device draw
    assert first != second  # replica 1: other noise, not a copy of replica 0's

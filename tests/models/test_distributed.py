"""Training under ``tf.distribute.MirroredStrategy`` with the CPU split into two logical devices.

Runs in a subprocess because logical devices must be configured before TensorFlow initialises its devices.
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
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from robustdet_tf.data import pipeline
    from robustdet_tf.data.shapes import shapes_dataset
    from robustdet_tf.distribution import replica_share
    from robustdet_tf.models.adversarial import AdversarialBatch
    from robustdet_tf.models.base import TrainingData
    from robustdet_tf.models.robustdet import RobustDet
    from robustdet_tf.models.ssd import SSD
    from robustdet_tf.models.training import sgd
    from tests.conftest import TINY_SSD
    from tests.helpers import rectangles

    result = {}
    images, targets = rectangles(4, 64, seed=1)
    ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)

    # The same SSD step on one device and on two replicas must give the same weights (global normalisation).
    keras.utils.set_random_seed(0)
    single = SSD(**TINY_SSD); single.build(); single.compile(optimizer=sgd(1e-2))
    initial = [w.numpy() for w in single.weights]
    single.fit(ds, epochs=1, verbose=0, shuffle=False)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = SSD(**TINY_SSD); mirrored.build(); mirrored.compile(optimizer=sgd(1e-2))
        for w, v in zip(mirrored.weights, initial):
            w.assign(v)
    mirrored.fit(ds, epochs=1, verbose=0, shuffle=False)
    result["replicas"] = strategy.num_replicas_in_sync
    result["max_weight_diff"] = max(float(np.abs(a.numpy() - b.numpy()).max())
                                    for a, b in zip(single.weights, mirrored.weights))

    source = shapes_dataset(16, image_size=64, seed=0)
    streams = pipeline.two_streams(source, seed=0, image_size=64, batch_size=4, max_boxes=6,
                                   augment_examples=False, shuffle_buffer=4)

    # One RobustDet step's loss terms and gradient (AID batch statistics, triplets, adc, MultiBox) on two replicas
    # equal the one-device ones: the AID normalises and forms triplets over the global batch.  (Whole training runs
    # under a strategy: tests/test_multi_worker.py and tests/models/test_held_batches.py; sign-gradient attacks
    # turn last-bit differences of kernels run at another batch size into other pixels, so fit-level equality needs
    # the same per-replica batch.)
    (clean, clean_t), (adv, adv_t) = next(iter(streams))

    def step(model, clean, clean_t, adv, adv_t):  # the step's arithmetic: whole-batch terms, each replica's share
        with tf.GradientTape() as tape:
            terms = model.compute_losses(TrainingData(clean, clean_t, adv, adv_t),
                                         AdversarialBatch(adv + 3.0, adv, adv_t))
        return terms, replica_share(tape.gradient(terms["loss"], model.trainable_variables))

    keras.utils.set_random_seed(0)
    one = RobustDet(**{**TINY_SSD, "num_classes": 7}, aid_width=4, seed=3)
    one.build()
    terms1, grads1 = tf.function(lambda *x: step(one, *x))(clean, clean_t, adv, adv_t)
    with strategy.scope():
        two = RobustDet(**{**TINY_SSD, "num_classes": 7}, aid_width=4, seed=3)
        two.build()
        for w, v in zip(two.weights, one.weights):
            w.assign(v)
    batch = next(iter(strategy.experimental_distribute_dataset(streams)))
    terms2, grads2 = tf.function(lambda b: strategy.run(lambda *x: step(two, *x), args=(*b[0], *b[1])))(batch)
    parts = lambda v: [t.numpy() for t in strategy.experimental_local_results(v)]
    summed = lambda v: sum(parts(v))  # Keras sums the replicas' gradients
    # Whole-batch terms: every replica's is an estimate of the global batch's term, their mean the one-device value
    result["terms"] = {k: [float(terms1[k]), float(np.mean(parts(terms2[k])))]
                       for k in ("loss", "loss_l", "loss_c", "loss_aid")}
    result["aid_per_replica"] = [float(v) for v in parts(terms2["loss_aid"])]  # the gathered batch: equal on both
    result["grad_rel_diff"] = max(float(np.abs(g1.numpy() - summed(g2)).max() / max(1e-6, np.abs(g1.numpy()).max()))
                                  for g1, g2 in zip(grads1, grads2) if g1 is not None)
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.slow
def test_fit_under_mirrored_strategy_on_two_logical_cpus():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    assert result["replicas"] == 2
    assert result["max_weight_diff"] < 1e-5, result
    for name, (one, two) in result["terms"].items():
        assert abs(one - two) <= 1e-5 * max(1.0, abs(one)), (name, result)
    assert result["aid_per_replica"][0] == result["aid_per_replica"][1], result
    # The defect this guards against (batch statistics all-reduced in another order) gave 6e-3.  What remains is
    # float32 summation order inside convolution kernels run at another per-replica batch size: 1.1e-5 (Eigen) and
    # 1.4e-5 (oneDNN) on an AVX-512 Xeon, below 1e-5 on the AMD EPYC this was first measured on.
    assert result["grad_rel_diff"] < 1e-4, result

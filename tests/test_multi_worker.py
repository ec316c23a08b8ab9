"""Two worker processes on localhost (CPU, ``TF_CONFIG``) train exactly what one process trains on the same global
batch split the same way: ``config.train.strategy="multi_worker"`` uses TensorFlow's MultiWorkerMirroredStrategy,
the data is sharded per worker, the held adversarial batch is kept per replica, RobustDet's AID normalises and forms
triplets over the global batch, and only the chief writes the run's files."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robustdet_tf.distribution import local_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import sys
    from robustdet_tf.distribution import make_strategy

    workdir, name, out = sys.argv[1:4]
    if name == "mirrored":  # the single process: two logical CPUs, the replicas' batch of each worker
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = make_strategy(name)  # first: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything
    import keras, numpy as np
    from robustdet_tf import train as train_lib
    from tests.test_train import tiny_config

    config = tiny_config({"method": "cls", "steps": 2})  # the interleaved schedule with its held batch
    with config.unlocked():  # RobustDet: AID batch statistics and triplet loss over the global batch
        config.model.update(kind="robustdet", num_kernels=2, cfr=False, aid_width=4)
    config.train.update(steps=3, batch_size=4, checkpoint_every=2, strategy=name)
    config.data.augment = False
    keras.utils.set_random_seed(0)
    trainer = train_lib.Trainer(config, workdir, strategy=strategy)
    np.savez(out.replace(".npz", "_initial.npz"), *[w.numpy() for w in trainer.model.weights])
    trainer.run(printer=lambda *_: None)
    np.savez(out, *[w.numpy() for w in trainer.model.weights])
    print("DONE", trainer.chief, trainer.strategy.num_replicas_in_sync, flush=True)
    """
)


def _start(args, tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _weights(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


@pytest.mark.slow
def test_two_workers_train_the_single_process_weights(tmp_path):
    # The single process splits the same global batch over two local replicas, so every kernel runs at the workers'
    # batch size: RobustDet's sign-gradient attack would turn last-bit differences of kernels run at another batch
    # size into other pixels (tests/models/test_distributed.py compares one device's step instead).
    single = _start([tmp_path / "single", "mirrored", tmp_path / "single.npz"])
    out, err = single.communicate(timeout=900)
    assert single.returncode == 0, err[-4000:]
    cluster = local_cluster(2)
    workers = [_start([tmp_path / "cluster", "multi_worker", tmp_path / f"worker{i}.npz"],
                      {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-4000:]
    assert "DONE True 2" in outputs[0][0] and "DONE False 2" in outputs[1][0] and "DONE True 2" in out
    want = _weights(tmp_path / "single.npz")
    for i in range(2):
        got = _weights(tmp_path / f"worker{i}.npz")
        assert len(got) == len(want)
        assert max(float(np.abs(a - b).max()) for a, b in zip(got, want)) < 1e-5
    assert max(float(np.abs(a - b).max()) for a, b in zip(want, _weights(tmp_path / "single_initial.npz"))) > 1e-4
    # Only the chief wrote the run: checkpoints, the record, TensorBoard; worker 1 saved into scratch only.
    run = tmp_path / "cluster"
    assert (run / "checkpoints" / "ckpt-3.index").exists() and (run / "model_config.json").exists()
    assert (run / "tensorboard").exists()
    assert not any("worker_1" in str(p) for p in run.rglob("*"))

"""Which devices a run uses: ``config.train.strategy`` → a ``tf.distribute`` strategy, and who writes the files.

TensorFlow's own distributed engine does all the work (no scheduler of ours): Keras' ``fit`` splits each global
batch over the replicas and sums their gradients, ``MultiWorkerMirroredStrategy`` reads the cluster from
``TF_CONFIG`` and shards the data per worker, and the models normalise their losses by global counts
(``models/training.py``), so N replicas make the update one device would make on the same global batch.

* ``auto``: every local GPU with ``MirroredStrategy`` if there is more than one, else the default strategy;
* ``mirrored``: ``MirroredStrategy`` over the local GPUs (or, without any, the CPU logical devices);
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` (start the same command on every host);
* ``tpu``: ``TPUStrategy`` (the resolver reads the TPU address from the environment);
* ``one_device``: ``OneDeviceStrategy`` on the first GPU, else the CPU.

Only the chief writes checkpoints, TensorBoard logs and result files; the other workers take part in every
collective (a checkpoint save is one) but write into a scratch folder that is removed afterwards.
"""

from __future__ import annotations

import json
import os
import socket

import keras
import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "multi_worker", "tpu", "one_device")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The strategy ``config.train.strategy`` names (see the module docstring)."""
    if name not in STRATEGIES:
        raise ValueError(f"config.train.strategy={name!r}: use one of {STRATEGIES}.")
    if name == "multi_worker":  # first, before anything initialises TensorFlow's runtime (listing logical devices does)
        if "TF_CONFIG" not in os.environ:
            raise ValueError("config.train.strategy='multi_worker' reads the cluster from the TF_CONFIG environment "
                             "variable, which is not set; see docs/scaling.md.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def task() -> tuple[str | None, int]:
    """``(task type, task index)`` of this process in ``TF_CONFIG`` (``(None, 0)`` outside a cluster)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    info = config.get("task", {})
    return info.get("type"), int(info.get("index", 0))


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's files: the ``chief`` task, or worker 0 of a cluster without one."""
    kind, index = task()
    if kind is None:
        return True
    cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def num_workers() -> int:
    """Processes in the ``TF_CONFIG`` cluster (1 outside one)."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster", {})
    return max(1, sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")))


def worker_index() -> int:
    """This process's place among the workers (chief first), for sharding work that is not a collective."""
    kind, index = task()
    if kind is None:
        return 0
    cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    return index + (len(cluster.get("chief", [])) if kind == "worker" else 0)


def write_dir(directory: str, strategy: tf.distribute.Strategy | None = None) -> str:
    """``directory`` for the chief; a per-worker scratch folder beside it for the others (they must still save,
    as saving takes part in collectives, but their copy is thrown away)."""
    if is_chief(strategy):
        return directory
    kind, index = task()
    return os.path.join(os.path.dirname(os.path.abspath(directory)), f".scratch_{kind}_{index}",
                        os.path.basename(directory))


def local_cluster(workers: int) -> dict[str, list[str]]:
    """The ``cluster`` of a ``TF_CONFIG`` with ``workers`` workers on free localhost ports: several processes on one
    machine (tests, benchmarks, trying ``multi_worker`` out before going to several hosts)."""
    sockets = [socket.socket() for _ in range(workers)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return {"worker": [f"localhost:{s.getsockname()[1]}" for s in sockets]}
    finally:
        for s in sockets:
            s.close()


# -- replica arithmetic of a training step ----------------------------------------------------------------------
# A model's ``compute_losses`` returns whole-batch terms: each replica's term is its estimate of the loss of the
# *global* batch (normalised by global counts, or computed on the gathered batch), so the mean of a term over the
# replicas is the one-device value and the logs need no rescaling.  Keras sums the replicas' gradients, so the step
# (``DetectionModelBase.apply_gradients``) divides every gradient by the replica count with ``replica_share``.


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 outside ``tf.distribute``)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_sum(value: tf.Tensor) -> tf.Tensor:
    """Sum of ``value`` over replicas when called inside a replica context; the value itself otherwise."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_mean(value: tf.Tensor) -> tf.Tensor:
    """Mean of ``value`` over replicas (a count per replica: the normaliser that makes a replica's partial sum its
    estimate of the whole batch's mean); the value itself outside ``tf.distribute``."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return replica_sum(value) / ctx.num_replicas_in_sync


def gather_replicas(value: tf.Tensor) -> tf.Tensor:
    """``value`` of every replica in sync concatenated along axis 0 in replica order (the rows of the global
    batch, as one device would hold them); the value itself outside ``tf.distribute``.  Differentiable: each
    replica's rows get the gradient summed over the replicas that used them."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_gather(value, axis=0)


def replica_share(grads: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
    """Each gradient divided by the replicas in sync: Keras sums the replicas' gradients of their whole-batch
    estimates, and the sum of the shares is the mean, the one-device gradient.  Unchanged outside a strategy."""
    replicas = num_replicas()
    if replicas == 1:
        return list(grads)
    return [None if g is None else g / tf.cast(replicas, g.dtype) for g in grads]


def replica_seed(seed: keras.random.SeedGenerator | int) -> tf.Tensor:
    """A stateless ``[2]`` int32 seed: the generator's next seed (or the fixed ``seed``) as Keras' random functions
    would use it, with this replica's id added to its second word inside a ``tf.distribute`` replica context.

    Why: every replica holds a copy of the same generator state, so ``keras.random.*`` draws the *same* noise on
    every replica, and the images of replica 1 would get replica 0's noise (CFR's reparameterisation, PGD's random
    start).  Replica 0 and code outside ``tf.distribute`` get exactly Keras' draw, so one-device numerics are
    unchanged.
    """
    raw = seed.next() if isinstance(seed, keras.random.SeedGenerator) else tf.constant([int(seed), 0], tf.int64)
    if raw.dtype != tf.int32:  # as Keras' TensorFlow backend casts a seed (stateless ops take int32 under XLA)
        raw = tf.cast(tf.math.floormod(tf.cast(raw, tf.int64), tf.int32.max - 1), tf.int32)
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return raw
    return raw + tf.stack([0, tf.cast(ctx.replica_id_in_sync_group, tf.int32)])

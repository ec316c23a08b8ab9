"""Every replica's held adversarial batch in a checkpoint, so a resume under N replicas continues all N of them.

The checkpoint state of the interleaved schedule (``AdversarialSchedule.checkpoint_state``).  Why: the schedule
(``models/adversarial.py``) keeps the batch being attacked in ``ON_READ`` variables,
one copy per replica, each holding that replica's share of the global batch.  A ``tf.train.Checkpoint`` saves an
``ON_READ`` variable by its first replica's value only, so after a resume every replica would continue replica 0's
images and the run would no longer be the uninterrupted one.  ``HeldBatches`` keeps, next to the model in the
checkpoint, the *global* held batch: before each save the replicas' copies are all-gathered in replica order (the
rows of the global batch as one device holds them); after a restore the global batch is cut back into one
contiguous share per replica.  The global view does not depend on the number of replicas, so a run saved on one
device resumes on two (and back) exactly as if it had used the new count from its last renewal on.

When the held global batch cannot be split evenly over the new replicas, the schedule restarts: the counter is set
to the next renewal, so the next step attacks a fresh batch (``restore`` says so).
"""

from __future__ import annotations

import tensorflow as tf


class HeldBatches(tf.Module):
    """The global held batch of ``schedule`` (an interleaved ``AdversarialSchedule``) under ``strategy``.

    Track it in the checkpoint (``tf.train.Checkpoint(..., held_batches=this)``), call ``capture()`` right before
    every save and ``restore()`` right after a checkpoint restore.
    """

    def __init__(self, schedule: tf.Module, strategy: tf.distribute.Strategy):
        super().__init__(name="held_batches")
        self._schedule, self._strategy = schedule, strategy
        self.replicas = tf.Variable(0, dtype=tf.int64, trainable=False, name="replicas")
        with tf.init_scope():  # plain host variables: every worker holds the same global batch
            self.values = {
                name: tf.Variable(tf.zeros([0] * held.shape.rank, held.dtype), shape=[None] * held.shape.rank,
                                  trainable=False, name=name)
                for name, held in schedule.held.items()
            }

    def _held(self) -> list[tf.Variable]:
        return list(self._schedule.held.values())

    def capture(self) -> None:
        """Store the replicas' held batches, concatenated in replica order (a collective: every worker calls it)."""
        gathered = self._gather()
        for name, value in zip(self._schedule.held, gathered):
            self.values[name].assign(value)
        self.replicas.assign(self._strategy.num_replicas_in_sync)

    @tf.function(autograph=False)
    def _gather(self) -> list[tf.Tensor]:
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            return [ctx.all_gather(tf.identity(v), axis=0) for v in self._held()]

        per_replica = self._strategy.run(replica_fn)
        return [self._strategy.experimental_local_results(v)[0] for v in per_replica]

    def restore(self) -> str | None:
        """Give every replica its share of the restored global batch; returns a message when the schedule had to
        restart instead (the global batch does not split evenly), else ``None``.  A checkpoint without a held batch
        (``replicas == 0``: written before this existed, or before the first save) leaves the model's own restore."""
        if int(self.replicas.numpy()) == 0:
            return None
        size = int(tf.shape(self.values["clean"])[0])
        replicas = self._strategy.num_replicas_in_sync
        if size % replicas:
            counter = self._schedule.counter
            restart = self._schedule.next_renewal(int(self._strategy.experimental_local_results(counter)[0].numpy()))
            self._assign_all(counter, tf.constant(restart, tf.int64))
            return (f"the held adversarial batch ({size} images) does not split over {replicas} replicas; the "
                    "interleaved schedule attacks a fresh batch at the next step")
        self._scatter()
        return None

    def _assign_all(self, variable: tf.Variable, value: tf.Tensor) -> None:
        self._strategy.run(tf.function(lambda: variable.assign(value), autograph=False))

    @tf.function(autograph=False)
    def _scatter(self) -> None:
        replicas = self._strategy.num_replicas_in_sync

        def replica_fn():
            index = tf.distribute.get_replica_context().replica_id_in_sync_group
            for name, held in self._schedule.held.items():
                value = self.values[name]
                part = tf.shape(value)[0] // replicas
                held.assign(value[index * part:(index + 1) * part])

        self._strategy.run(replica_fn)

"""Training driver: config → model, optimiser and data stream → ``model.fit``, with checkpoints and resume.

``model.fit`` is the loop (the models' own ``train_step`` holds the algorithm), so Keras callbacks work as usual.
Around it this module adds what a long run needs:

* checkpoints (model, optimiser, the held adversarial batch and its counter, seed-generator states) every
  ``train.checkpoint_every`` steps and on SIGINT/SIGTERM, through ``tf.train.CheckpointManager``, which writes the
  new files before it updates its index, so an interrupted save leaves the previous checkpoint intact;
* resume from the workdir at the step the last checkpoint holds, with the data stream restarted at the same
  position (the pipeline is a pure function of seed and position);
* a workdir guard: a workdir whose recorded model differs from the config is refused before anything is written;
* progress (steps/s, ETA, loss terms) and TensorBoard logs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf import run_report
from robustdet_tf.checkpoints import integrity
from robustdet_tf.checkpoints.saving import CheckpointEvery, NonFiniteWeightsError, save_checkpoint
from robustdet_tf.data import pipeline
from robustdet_tf.data.contract import DetectionSource, check_labels_fit
from robustdet_tf.data.sources import load_source
from robustdet_tf.distribution import is_chief, make_strategy, write_dir
from robustdet_tf.initial_model import IMPORTED_MODEL, imported_model, initial_model_and_origin, seed_run
from robustdet_tf.io import remove_leftovers, workdir_lock
from robustdet_tf.models import training
from robustdet_tf.models.adversarial import AdversarialSchedule
from robustdet_tf.models.factory import build_model
from robustdet_tf.models.held_batches import HeldBatches
from robustdet_tf.workdir import (
    MODEL_RECORD,
    TRAIN_RECORD,
    IncompatibleWorkdirError,
    check_not_foreign,
    check_training_settings,
    check_workdir,
    model_config_dict,
    recorded_settings,
    save_model_atomically,
    train_record,
    write_json_atomically,
)


class TrainingInterrupted(RuntimeError):
    """A run stopped by a signal before its last step (its checkpoint is saved): the caller must not go on as if
    the model were trained."""


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss term or the weights became NaN or inf (nothing non-finite was checkpointed)."""


def learning_rate(train: Mapping[str, Any]):
    """Constant, or step decay ×``lr_gamma`` at each of ``lr_steps`` (the reference's schedule)."""
    steps = tuple(train["lr_steps"] or ())
    if not steps:
        return float(train["learning_rate"])
    values = [float(train["learning_rate"]) * float(train["lr_gamma"]) ** i for i in range(len(steps) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(list(steps), values)


def make_optimizer(train: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """SGD with momentum (the reference; weight decay is added in ``train_step``) or Adam (``optimizer="adam"``)."""
    kind = train.get("optimizer", "sgd")
    if kind == "sgd":
        return training.sgd(learning_rate(train), float(train["momentum"]))
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate(train))
    raise ValueError(f"config.train.optimizer={kind!r}: use 'sgd' (reference) or 'adam'")


def compile_model(model: keras.Model, train: Mapping[str, Any]) -> keras.Model:
    """Compile with the configured optimiser; XLA only when ``train.jit_compile`` asks for it.

    XLA is off by default: Keras' ``"auto"`` would enable it on a GPU, and on CPU it makes AAconv's per-image paths
    9–60× slower.
    """
    optimizer = make_optimizer(train)
    if train.get("precision", "float32") == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, jit_compile=bool(train.get("jit_compile", False)))
    model.optimizer.build(model.trainable_variables)
    return model


def training_batches(source: DetectionSource, config, start_step: int = 0,
                     schedule: AdversarialSchedule | None = None):
    """The batches ``fit`` consumes: ``(images, targets)``, or, with an adversarial ``schedule``, the two streams
    of adversarial training.

    The schedule takes a fresh batch to attack only every ``schedule.renewal_period`` optimiser steps;
    ``pipeline.two_streams`` repeats each batch of the second stream that many times so no augmentation work is
    wasted.
    """
    data, train = config.data, config.train
    kwargs = dict(
        image_size=config.model.image_size,
        max_boxes=data.max_boxes,
        augment_examples=data.augment,
        chain=data.augment_chain,
        cache=data.cache,
        num_examples=source.num_examples,
        seed=train.seed,
        start_step=start_step,
    )
    if schedule is None:
        return _shard_by_data(pipeline.train_batches(source.dataset, batch_size=train.batch_size, **kwargs))
    streams = pipeline.two_streams(source.dataset, batch_size=max(1, train.batch_size // 2),
                                   renew_every=schedule.renewal_period, **kwargs)
    return _shard_by_data(streams.prefetch(tf.data.AUTOTUNE))


def _shard_by_data(batches: tf.data.Dataset) -> tf.data.Dataset:
    """Under ``multi_worker`` each worker takes its part of every global batch (tf.data's DATA auto-sharding): the
    stream is a function of seed and position, not of files, so the cluster sees the single-process batches."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)


class Progress(keras.callbacks.Callback):
    """Every ``every`` steps: step, steps/s, ETA and the loss terms (running means since the last report)."""

    def __init__(self, total_steps: int, start_step: int, every: int, printer=print):
        super().__init__()
        self.total, self.start, self.every, self.printer = total_steps, start_step, max(1, every), printer

    def on_train_begin(self, logs=None):
        self.t0 = time.time()
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        step = self.start + self.done
        if step % self.every and step != self.total:
            return
        rate = self.done / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        terms = " ".join(f"{k}={float(v):.4g}" for k, v in sorted((logs or {}).items()))
        self.printer(f"step {step}/{self.total}  {rate:.2f} steps/s  ETA {eta:.0f}s  {terms}")
        for metric in self.model.metrics:  # the next report averages the next window only
            metric.reset_state()


def adopt_class_names(model: keras.Model, source: DetectionSource) -> None:
    """Refuse a source the model cannot learn (more classes, other names) before a step runs; a model built without
    a label map takes the source's, so the saved model knows its classes."""
    check_labels_fit(source, model.num_classes, model.class_names, f"the model {model.name!r}")
    if model.class_names is None:
        model.class_names = tuple(source.class_names)


def held_batches_of(model: keras.Model, strategy: tf.distribute.Strategy) -> HeldBatches | None:
    """The checkpointed global held batch of an interleaved adversarial schedule (``None`` for other models)."""
    schedule = model.adversary
    return None if schedule is None else schedule.checkpoint_state(strategy)


class Trainer:
    """Builds everything a run needs from ``config`` and trains in ``workdir``, resuming what is there."""

    def __init__(self, config, workdir: str, source: DetectionSource | None = None, model: keras.Model | None = None,
                 strategy: tf.distribute.Strategy | None = None):
        check_workdir(workdir, config)
        self.config, self.workdir = config, workdir
        # multi_worker must be created before TensorFlow runs anything: main.py makes it first and passes it here.
        self.strategy = strategy or make_strategy(str(config.train.get("strategy", "auto")))
        self.chief = is_chief(self.strategy)
        self.precision = str(config.train.get("precision", "float32"))
        # Variables (model, optimiser, held adversarial batch) live on the replicas; layers take the dtype policy.
        with self.strategy.scope(), training.precision(self.precision):
            self.model = self._in_scope(model) if model is not None else build_model(config.model)
            compile_model(self.model, config.train)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.held_batches = held_batches_of(self.model, self.strategy)
        parts = {"held_batches": self.held_batches} if self.held_batches is not None else {}
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, step=self.step,
                                              **parts)
        self.checkpoint_dir = os.path.join(workdir, "checkpoints")
        # Before the manager reads the folder's state file: damaged checkpoints are moved aside and the state file
        # lists the intact ones, so the resume takes the newest whole checkpoint and rotation never reaches it.
        self.notes = self._sort_out_checkpoints()
        self.manager = tf.train.CheckpointManager(  # the chief's folder; other workers save into scratch
            self.checkpoint, write_dir(self.checkpoint_dir, self.strategy), max_to_keep=int(config.train.get("keep", 2))
        )
        self.source = source
        recorded = recorded_settings(workdir, self.checkpoint_dir, config)  # refused changes stop the run first
        self.start_step = self.restore()
        if self.start_step and recorded is not None:
            self.notes += self._apply_changed_settings(recorded)

    def _in_scope(self, model: keras.Model) -> keras.Model:
        """``model`` itself under the default strategy and its own precision; else a copy built in the strategy's
        scope under the configured precision, holding the same weights."""
        if self.strategy is tf.distribute.get_strategy() and model.dtype_policy.name == self.precision:
            return model
        model.build()
        config = {k: v for k, v in model.get_config().items() if k != "dtype"}
        copy = type(model).from_config(config)
        copy.build()
        copy.set_weights(model.get_weights())
        return copy

    def _apply_changed_settings(self, recorded: dict) -> list[str]:
        """Apply a new learning rate or momentum to the restored optimiser (which would otherwise keep the old ones)
        and return one line per ``config.train`` key that differs from the record."""
        current = train_record(self.config)
        changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        optimizer = self.model.optimizer
        if {"learning_rate", "lr_steps", "lr_gamma"} & set(changed):
            optimizer.learning_rate = learning_rate(self.config.train)
        if "momentum" in changed and hasattr(optimizer, "momentum"):
            optimizer.momentum = float(self.config.train.momentum)
        applied = {"learning_rate", "lr_steps", "lr_gamma", "momentum"}
        return [f"resume: train.{k} changed from {recorded.get(k)!r} to {current.get(k)!r}"
                + (" (applied to the restored optimiser)" if k in applied else "") for k in changed]

    def _sort_out_checkpoints(self) -> list[str]:
        """The chief checks every checkpoint of the workdir (``checkpoints/integrity.py``); returns what to say."""
        if not self.chief:
            return []
        intact, damaged = integrity.sort_out(self.checkpoint_dir)
        if not damaged:
            return []
        if not intact:
            raise integrity.NoIntactCheckpointError(
                f"{self.workdir} has no intact checkpoint to resume from: {integrity.describe(damaged)}. Nothing was "
                "trained and nothing was deleted. To start this run over, use another --workdir (or move "
                f"{self.checkpoint_dir} away).")
        return [f"{integrity.describe(damaged)}; resuming from the newest intact checkpoint, "
                f"{os.path.basename(intact[-1][0])} (step {intact[-1][1]})"]

    def restore(self) -> int:
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)  # every worker resumes from the chief's files
        if latest is None:
            return 0
        checkpoint = self.checkpoint
        saved = {name for name, _ in tf.train.list_variables(latest)}
        if self.held_batches is not None and not any(name.startswith("held_batches/") for name in saved):
            # written before checkpoints held every replica's batch: the model's own (first replica's) copy serves
            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, step=self.step)
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise IncompatibleWorkdirError(
                f"checkpoint {latest} does not fit the configured model ({err}). Nothing was changed; use another "
                "--workdir."
            ) from err
        if checkpoint is self.checkpoint and self.held_batches is not None:
            message = self.held_batches.restore()
            if message:
                print(f"resuming {latest}: {message}")
        return int(self.step.numpy())

    def run(self, steps: int | None = None, callbacks=(), verbose_every: int | None = None, printer=print) -> dict:
        """Train until ``steps`` (default ``config.train.steps``) optimiser steps; return the last logs.

        The workdir is locked meanwhile (``io.workdir_lock``): a second run into it is refused.
        """
        if not self.chief:  # the chief holds the lock for the whole cluster; this worker's saves are thrown away
            try:
                return self._run(steps, callbacks, verbose_every, printer)
            finally:
                shutil.rmtree(os.path.dirname(self.manager.directory), ignore_errors=True)
        with workdir_lock(self.workdir):
            return self._run(steps, callbacks, verbose_every, printer)

    def _run(self, steps, callbacks, verbose_every, printer) -> dict:
        total = int(steps if steps is not None else self.config.train.steps)
        remaining = total - self.start_step
        if remaining > 0 and self.source is None:  # a data config that cannot be read fails before any write
            self.source = load_source(self.config.data, "train")
        os.makedirs(self.workdir, exist_ok=True)
        if self.chief:
            write_json_atomically(model_config_dict(self.config), os.path.join(self.workdir, MODEL_RECORD))
            write_json_atomically(train_record(self.config), os.path.join(self.workdir, TRAIN_RECORD))
        if remaining <= 0:
            printer(f"{self.workdir}: already trained for {self.start_step} steps (target {total})")
            return {}
        adopt_class_names(self.model, self.source)
        batches = training_batches(self.source, self.config, self.start_step, getattr(self.model, "adversary", None))
        capture = self.held_batches.capture if self.held_batches is not None else None
        saver = CheckpointEvery(self.manager, self.step, self.start_step, self.config.train.checkpoint_every,
                                before_save=capture)
        progress = Progress(total, self.start_step, verbose_every or self.config.train.log_every, printer)
        board = [keras.callbacks.TensorBoard(os.path.join(self.workdir, "tensorboard"),
                                             update_freq=int(self.config.train.log_every))] if self.chief else []
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def interrupt(signum, frame):
            printer(f"signal {signum}: saving a checkpoint and stopping")
            saver.interrupted = True

        for sig in previous:
            signal.signal(sig, interrupt)
        try:
            history = self.model.fit(
                batches, steps_per_epoch=remaining, epochs=1, verbose=0, shuffle=False,
                callbacks=[saver, progress, *board, *callbacks],
            )
        except tf.errors.InvalidArgumentError as err:
            raise self._non_finite_error(err) from None
        except NonFiniteWeightsError as err:
            raise self._diverged(err.step, f"the weights ({err.names}) became NaN or inf",
                                 "the update that produced them is not checkpointed") from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        done = self.start_step + saver.done
        if not saver.interrupted and done % saver.every:
            save_checkpoint(self.manager, done, before_save=capture, weights=self.model.weights)
        self.start_step = done
        return {k: float(v[-1]) for k, v in history.history.items()}


    def _non_finite_error(self, err: tf.errors.InvalidArgumentError) -> Exception:
        """The model's finite-loss check (``training.check_finite``) as one message; other errors unchanged."""
        found = re.search(r"non-finite loss term (\w+) at optimiser step\D*(\d+)", str(err.message))
        if found is None:
            return err
        return self._diverged(int(found.group(2)) + 1, f"the loss term {found.group(1)} became non-finite (NaN or inf)",
                              "the update of that step was not applied")

    def _diverged(self, step: int, what: str, consequence: str) -> NonFiniteLossError:
        """One message for a run that diverged: what, at which step, at what learning rate, and what the last
        checkpoint holds."""
        rate = self.config.train.learning_rate
        latest = self.manager.latest_checkpoint
        kept = (f"the last checkpoint, {os.path.basename(latest)}, was written before it and holds finite weights "
                "(no checkpoint with non-finite weights is ever written)" if latest else "no checkpoint was written")
        return NonFiniteLossError(
            f"training stopped: {what} at optimiser step {step}, learning rate {rate:g}; {consequence}. In "
            f"{self.workdir}, {kept}. The run diverged: resume with a lower learning rate (e.g. "
            f"--config.train.learning_rate={float(rate) / 10:g}), or check the data for empty or broken boxes.")


def load_trained_model(workdir: str, config) -> keras.Model:
    """The model of a workdir: ``model.keras`` if training finished, else the latest checkpoint."""
    path = os.path.join(workdir, "model.keras")
    if os.path.exists(path):
        return integrity.load_model_file(path)
    trainer = Trainer(config, workdir)
    if trainer.start_step == 0:
        raise FileNotFoundError(
            f"{workdir} holds no trained model (no model.keras, no checkpoint): run --mode=train with this --workdir "
            "first, or --mode=import an official checkpoint"
        )
    return trainer.model


def train_in_workdir(config, workdir: str, model: keras.Model | None = None, source: DetectionSource | None = None,
                     printer=print, strategy: tf.distribute.Strategy | None = None,
                     origin: str | None = None) -> keras.Model:
    """Train (resuming whatever the workdir holds) and save ``model.keras`` when the target step is reached.

    Order: the settings are checked and a folder of someone else's files refused before anything is read or
    written; then the run takes the workdir's lock (a second run is refused in one line, before it reads, restores
    or prints anything of the folder); then damaged checkpoints are moved aside.  Without an intact checkpoint the
    run starts as configured (``model``, an imported model, ``train.init_from``, ``model.backbone_init``), also
    when an earlier attempt died while writing its first checkpoint.  A run with steps left starts with the report
    of ``run_report`` (data, classes, model, where the weights come from, schedule); ``origin`` says where a
    ``model`` given here comes from."""
    check_training_settings(config)
    check_not_foreign(workdir)
    strategy = strategy or make_strategy(str(config.train.get("strategy", "auto")))
    with workdir_lock(workdir) if is_chief(strategy) else contextlib.nullcontext():
        return _train_locked(config, workdir, model, source, printer, strategy, origin)


def _train_locked(config, workdir, model, source, printer, strategy, origin) -> keras.Model:
    check_workdir(workdir, config)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    intact, damaged = [], []
    if is_chief(strategy):
        left = remove_leftovers(workdir) + [f"checkpoints/{n}" for n in integrity.remove_temporaries(checkpoint_dir)]
        if left:
            printer(f"removed what killed writes left in {workdir}: {', '.join(left)}")
        intact, damaged = integrity.sort_out(checkpoint_dir)
    if damaged and not intact and os.path.exists(os.path.join(workdir, "model.keras")):
        # a finished run's model would be replaced by a run started over: keep it, say what is left
        raise integrity.NoIntactCheckpointError(
            f"{workdir} has no intact checkpoint to resume from: {integrity.describe(damaged)}. Nothing was "
            "trained and nothing was deleted. To start this run over, use another --workdir (or move "
            f"{checkpoint_dir} away).")
    if damaged:
        printer(f"{integrity.describe(damaged)}; " + (
            f"resuming from the newest intact checkpoint, {os.path.basename(intact[-1][0])} (step {intact[-1][1]})"
            if intact else "no intact checkpoint is left (the first one's write died), so the run starts as "
            "configured"))
    resumable = bool(intact) or tf.train.latest_checkpoint(checkpoint_dir) is not None
    if model is None and not resumable:
        seed_run(config)
        model = imported_model(workdir, printer)
        if model is not None:
            origin = f"the imported model {os.path.join(workdir, IMPORTED_MODEL)}"
        else:
            model, origin = initial_model_and_origin(config)
    elif model is not None and origin is None:
        origin = "the model given to train_in_workdir"
    trainer = Trainer(config, workdir, source=source, model=model, strategy=strategy)
    for note in trainer.notes:
        printer(note)
    if trainer.start_step:
        printer(f"resuming {workdir} at step {trainer.start_step}")
    if trainer.start_step < config.train.steps and trainer.chief:
        trainer.source = trainer.source or load_source(config.data, "train")
        if trainer.start_step:
            origin = f"the checkpoint of step {trainer.start_step} in {os.path.join(workdir, 'checkpoints')} (resumed)"
        report = run_report.training_report(config, trainer.source, trainer.model, origin or "")
        for line in report:
            printer(line)
    trainer.run(printer=printer)
    if trainer.start_step < config.train.steps:  # stopped by SIGINT / SIGTERM, its checkpoint saved
        raise TrainingInterrupted(
            f"training in {workdir} was stopped at step {trainer.start_step} of {config.train.steps}; the checkpoint "
            "of that step is saved and no model.keras was written. Run the same command again to resume.")
    if trainer.chief:
        path = save_model_atomically(trainer.model, os.path.join(workdir, "model.keras"))
        printer(f"saved {path}")
    return trainer.model

"""A run that diverges: one message naming the step, the term, the learning rate and the last checkpoint, and no
checkpoint of non-finite weights is ever written."""

import os

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf import train as train_lib
from robustdet_tf.checkpoints.saving import NonFiniteWeightsError, save_checkpoint
from robustdet_tf.workdir import IncompatibleWorkdirError
from tests.test_train import tiny_config


def test_a_diverging_run_stops_with_one_message_and_keeps_its_finite_checkpoint(tmp_path):
    config = tiny_config()
    config.train.learning_rate = 1e6
    config.train.checkpoint_every = 1
    with pytest.raises(train_lib.NonFiniteLossError) as caught:
        train_lib.train_in_workdir(config, str(tmp_path), printer=lambda *_: None)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    found = [int(n.split("-")[1].split(".")[0]) for n in os.listdir(tmp_path / "checkpoints") if n.endswith(".index")]
    # Whichever shows first at this rate — a NaN loss term or NaN weights at the checkpoint — one message says it.
    assert "became non-finite (NaN or inf) at optimiser step" in message or "became NaN or inf at optimiser step" in \
        message
    assert "learning rate 1e+06" in message and "The run diverged" in message
    step = int(message.split("optimiser step ")[1].split(",")[0])
    assert max(found, default=0) == step - 1  # every step before the failure was checkpointed, not the failed one
    assert ("was written before it and holds finite weights" in message) == bool(found)
    assert "--config.train.learning_rate=100000" in message
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    if latest:
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), name


def test_weights_holding_nan_are_never_checkpointed(tmp_path):
    config = tiny_config()
    trainer = train_lib.Trainer(config, str(tmp_path))
    save_checkpoint(trainer.manager, 1, weights=trainer.model.weights)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    variable = trainer.model.trainable_weights[0]
    variable.assign(np.full(variable.shape, np.nan, np.float32))
    with pytest.raises(NonFiniteWeightsError, match=r"not writing the checkpoint of step 2: the model's weights .* "
                                                    r"hold NaN or inf\. The previous checkpoint \(.*ckpt-1\) is kept"):
        save_checkpoint(trainer.manager, 2, weights=trainer.model.weights)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


@pytest.mark.slow
def test_settings_changed_on_resume_are_said_applied_to_the_optimiser_or_refused_by_name(tmp_path):
    config = tiny_config()
    config.train.steps = 2
    train_lib.train_in_workdir(config, str(tmp_path), printer=lambda *_: None)

    resumed = tiny_config()
    resumed.train.steps = 4
    resumed.train.learning_rate = 1e-5
    resumed.train.batch_size = 2
    trainer = train_lib.Trainer(resumed, str(tmp_path))
    assert trainer.start_step == 2
    notes = "\n".join(trainer.notes)
    assert "resume: train.learning_rate changed from 0.001 to 1e-05 (applied to the restored optimiser)" in notes
    assert "resume: train.batch_size changed from 4 to 2" in notes and "train.steps changed from 2 to 4" in notes
    assert float(trainer.model.optimizer.learning_rate) == pytest.approx(1e-5)  # not the restored 1e-3
    trainer.run(printer=lambda *_: None)
    assert trainer.start_step == 4 and float(trainer.model.optimizer.learning_rate) == pytest.approx(1e-5)

    other = tiny_config()
    other.train.steps = 6
    other.train.optimizer = "sgd"
    with pytest.raises(IncompatibleWorkdirError,
                       match=r"trained with train\.optimizer='adam'; a resume cannot change train\.optimizer"):
        train_lib.Trainer(other, str(tmp_path))

"""Training driver: checkpoints on interrupt, exact resume, and the workdir guard."""

import os
import signal

import keras
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import demo
from robustdet_tf import train as train_lib
from robustdet_tf.checkpoints.saving import CheckpointWriteError
from robustdet_tf.initial_model import initial_model, model_from_ssd
from robustdet_tf.workdir import IncompatibleWorkdirError, save_model_atomically, write_json_atomically
from tests.conftest import TINY_SSD


def tiny_config(adversarial=None) -> ConfigDict:
    config = demo.get_config()
    with config.unlocked():
        config.model.update({k: v for k, v in TINY_SSD.items() if k != "num_classes"})
        if adversarial:
            config.model.adversarial = adversarial
    config.data.image_size = 64
    config.data.train_images = 24
    config.data.augment = True
    config.train.batch_size = 4
    config.train.steps = 6
    config.train.checkpoint_every = 2
    config.train.log_every = 2
    return config


class InterruptAt(keras.callbacks.Callback):
    """Sends this process a SIGINT after ``step`` batches, as a user pressing Ctrl-C would."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def trained_weights(config, workdir, interrupt_at=None):
    keras.utils.set_random_seed(0)
    trainer = train_lib.Trainer(config, str(workdir))
    callbacks = [InterruptAt(interrupt_at)] if interrupt_at else []
    trainer.run(callbacks=callbacks, printer=lambda *_: None)
    if interrupt_at:
        assert trainer.start_step == interrupt_at  # stopped after the interrupted step, checkpoint saved
        keras.utils.set_random_seed(123)  # the resumed run must not depend on fresh initial weights
        trainer = train_lib.Trainer(config, str(workdir))
        assert trainer.start_step == interrupt_at
        trainer.run(printer=lambda *_: None)
    assert trainer.start_step == config.train.steps
    return [w.numpy() for w in trainer.model.weights], trainer


@pytest.mark.slow
@pytest.mark.parametrize("adversarial", [None, {"method": "cls", "steps": 4}])
def test_interrupted_then_resumed_run_matches_an_uninterrupted_one(tmp_path, adversarial):
    config = tiny_config(adversarial)
    straight, _ = trained_weights(config, tmp_path / "straight")
    resumed, trainer = trained_weights(config, tmp_path / "resumed", interrupt_at=3)
    for a, b in zip(straight, resumed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if adversarial:
        assert int(trainer.model.adversary.counter.numpy()) == 6
    assert os.path.exists(tmp_path / "resumed" / "tensorboard")


def test_incompatible_workdir_is_refused_and_untouched(tmp_path):
    config = tiny_config()
    config.train.steps = 2
    trainer = train_lib.Trainer(config, str(tmp_path))
    trainer.run(printer=lambda *_: None)
    before = {p: os.path.getmtime(p) for p in tmp_path.rglob("*") if p.is_file()}
    other = tiny_config()
    other.model.width = 0.125
    with pytest.raises(IncompatibleWorkdirError, match="width"):
        train_lib.Trainer(other, str(tmp_path))
    after = {p: os.path.getmtime(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after


def test_learning_rate_schedule():
    schedule = train_lib.learning_rate({"learning_rate": 1e-3, "lr_steps": (10, 20), "lr_gamma": 0.1})
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 10, 11, 25)], [1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-6)
    assert train_lib.learning_rate({"learning_rate": 0.01, "lr_steps": (), "lr_gamma": 0.1}) == 0.01


def test_failed_model_save_keeps_the_previous_archive(tmp_path):
    class Unsaveable:
        def save(self, path):
            with open(path, "wb") as handle:
                handle.write(b"half an archive")
            raise OSError("disk full")

    path = tmp_path / "model.keras"
    path.write_bytes(b"previous archive")
    with pytest.raises(OSError, match="disk full"):
        save_model_atomically(Unsaveable(), str(path))
    assert path.read_bytes() == b"previous archive"
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]
    write_json_atomically({"kind": "ssd"}, str(tmp_path / "record.json"))
    assert (tmp_path / "record.json").read_text() == '{\n "kind": "ssd"\n}'
    assert sorted(os.listdir(tmp_path)) == ["model.keras", "record.json"]


def test_robustdet_stage_expands_an_ssd_with_its_label_map(tmp_path):
    """``model_from_ssd`` takes the stage's model keys (not ``backbone_init``, which only starts fresh models)."""
    from robustdet_tf.models.ssd import SSD

    ssd = SSD(**dict(TINY_SSD, class_names=("a", "b", "c")))
    config = tiny_config()
    with config.unlocked():
        config.model.update(kind="robustdet", num_classes=4, num_kernels=2, cfr=False, aid_width=4, decoder_width=16,
                            backbone_init="none", class_names=("a", "b", "c"))
    robust = model_from_ssd(ssd, config)
    assert robust.num_kernels == 2 and robust.class_names == ("a", "b", "c")
    with config.unlocked():
        config.model.backbone_init = "imagenet"
        config.train.init_from = str(tmp_path / "ssd.keras")
    with pytest.raises(ValueError, match="keep one of them"):
        initial_model(config)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resumes(tmp_path, monkeypatch):
    """A write that fails half-way (simulated ENOSPC from SaveV2) gives one clear error; the partial files are
    removed and the run resumes from the previous checkpoint."""
    import tensorflow as tf

    config = tiny_config()
    config.train.update(steps=4, checkpoint_every=2)
    trainer = train_lib.Trainer(config, str(tmp_path))
    real_save = tf.train.CheckpointManager.save

    def full_disk(manager, checkpoint_number=None, **kwargs):
        if checkpoint_number == 4:
            partial = os.path.join(manager.directory, "ckpt-4_temp")
            os.makedirs(partial)
            open(os.path.join(partial, "part-00000-of-00001.data-00000-of-00001"), "wb").write(b"half")
            raise tf.errors.ResourceExhaustedError(None, None, "ckpt-4_temp/part-00000; No space left on device")
        return real_save(manager, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        trainer.run(printer=lambda *_: None)
    message = str(info.value)
    assert "step 4" in message and str(tmp_path / "checkpoints") in message and "MiB free" in message
    assert "No space left on device" in message and "ckpt-2" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real_save)
    resumed = train_lib.Trainer(config, str(tmp_path))
    assert resumed.start_step == 2
    resumed.run(printer=lambda *_: None)
    assert resumed.start_step == 4


def test_a_second_run_into_a_busy_workdir_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    from robustdet_tf.io import WorkdirLockedError
    from tests.helpers import lock_held_by_another_process

    with lock_held_by_another_process(tmp_path) as pid:
        config = tiny_config()
        config.train.steps = 1
        trainer = train_lib.Trainer(config, str(tmp_path))
        with pytest.raises(WorkdirLockedError, match=f"in use by another run \\(pid {pid} "):
            trainer.run(printer=lambda *_: None)
        assert not (tmp_path / "checkpoints").exists()
    trainer.run(printer=lambda *_: None)
    assert trainer.start_step == 1


@pytest.mark.slow
def test_mixed_bfloat16_trains_and_attacks_robustdet_with_cfr_without_nan(tmp_path):
    import tensorflow as tf

    from robustdet_tf.attacks.pgd import pgd
    from robustdet_tf.attacks.spec import AttackSpec

    config = tiny_config({"method": "mtd", "steps": 2})
    with config.unlocked():
        config.model.update(kind="robustdet", num_kernels=2, cfr=True, aid_width=4, decoder_width=16)
    config.train.update(steps=3, precision="mixed_bfloat16")
    trainer = train_lib.Trainer(config, str(tmp_path))
    logs = trainer.run(printer=lambda *_: None)
    assert keras.config.dtype_policy().name == "float32"  # the policy applied to this model only
    conv = trainer.model.detector.all_convs()["vgg_0"]
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert all(np.isfinite(v) for v in logs.values()) and set(logs) >= {"loss", "loss_re", "loss_kld", "loss_aid"}
    assert all(np.isfinite(w.numpy()).all() for w in trainer.model.weights)
    images = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=3)
    targets = {"boxes": tf.constant([[[0.1, 0.1, 0.6, 0.7]]] * 2), "labels": tf.constant([[1]] * 2)}
    adv = pgd(trainer.model, images, targets, AttackSpec("cls", steps=2))
    assert adv.dtype == tf.float32 and np.isfinite(adv.numpy()).all()
    assert 0 < float(tf.reduce_max(tf.abs(adv - images))) <= 8.0 + 1e-4
    assert trainer.model(images)["loc"].dtype == tf.float32


def test_mixed_float16_scales_the_loss():
    config = tiny_config()
    config.train.precision = "mixed_float16"
    model = train_lib.compile_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), config.train)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    config.train.precision = "float64"
    with pytest.raises(ValueError, match="config.train.precision='float64'"):
        train_lib.Trainer(config, "/nonexistent/never-written")

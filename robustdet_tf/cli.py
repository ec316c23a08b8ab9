"""What each ``main.py --mode`` does, as plain functions of ``(config, workdir)`` so tests can call them.

``train`` trains (and resumes) in the workdir; ``evaluate`` scores the trained model under the configured attacks;
``attack`` writes adversarial images for inspection; ``demo`` runs the embedded end-to-end demonstration;
``export`` and ``import`` move models to and from SavedModel / TFLite / official PyTorch checkpoints.  The work is
done by the rooms below (``train``, ``evaluation``, ``export``, ``checkpoints``, ``demo``); this module only wires
them to the workdir.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf import demo
from robustdet_tf import train as train_lib
from robustdet_tf.attacks.pgd import pgd
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.checkpoints.torch_import import import_checkpoint
from robustdet_tf.evaluation.from_config import eval_batches, evaluate_models
from robustdet_tf.export import export_all

load_trained_model = train_lib.load_trained_model
run_train = train_lib.train_in_workdir


def run_evaluate(config, workdir: str, models: dict | None = None, printer=print) -> dict:
    """Robustness evaluation of the workdir's model (or ``models``) under ``config.eval.attacks``."""
    models = models or {os.path.basename(os.path.normpath(workdir)): load_trained_model(workdir, config)}
    return evaluate_models(config, models, workdir, printer=printer)


def run_attack(config, workdir: str, printer=print) -> list[str]:
    """Write clean and adversarial images (A_cls PGD by default) of the first eval batch as PNG files."""
    model = load_trained_model(workdir, config)
    _, batches = eval_batches(config)
    images, targets = next(iter(batches))
    method = config.eval.get("attack_method", "cls")
    adv = pgd(model, images, {"boxes": targets["boxes"], "labels": targets["labels"]}, AttackSpec(method))
    out = os.path.join(workdir, "adversarial")
    os.makedirs(out, exist_ok=True)
    written = []
    for i in range(int(tf.shape(images)[0])):
        for tag, batch in (("clean", images), (method, adv)):
            path = os.path.join(out, f"{i:03d}_{tag}.png")
            keras.utils.save_img(path, np.clip(batch[i].numpy(), 0, 255).astype(np.uint8))
            written.append(path)
    printer(f"wrote {len(written)} images to {out}")
    return written


def run_export(config, workdir: str, export_dir: str, printer=print) -> dict:
    model = load_trained_model(workdir, config)
    paths = export_all(model, export_dir)
    printer(f"exported {paths}")
    return paths


def run_import(config, workdir: str, checkpoint: str | None, printer=print) -> str:
    if not checkpoint:
        raise ValueError("--mode=import needs --checkpoint=<official .pth file>")
    train_lib.check_workdir(workdir, config)
    model = import_checkpoint(checkpoint, config.model)
    path = os.path.join(workdir, "model.keras")
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; import into an empty --workdir so nothing is overwritten")
    train_lib.save_model_atomically(model, path)
    train_lib.write_json_atomically(train_lib.model_config_dict(config), os.path.join(workdir, train_lib.MODEL_RECORD))
    printer(f"imported {checkpoint} into {path}")
    return path


def run_demo(config, workdir: str, printer=print) -> dict:
    return demo.run(config, workdir, printer=printer)

"""Sample pictures of a robustness table: clean against attacked detections of the first images of each cell.

Why apart from the table: pictures are for people reading a table, not numbers of it; the engine hands each cell's
first batch over and this module draws it (``report.write_sample_pngs``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from robustdet_tf.evaluation.evaluate import AttackFn, detection_step
from robustdet_tf.evaluation.report import file_stem, write_sample_pngs


def save_sample_detections(
    model: keras.Model,
    images: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    output_dir: str,
    attack: AttackFn | None,
    attack_name: str = "attack",
    class_names: Sequence[str] | None = None,
    num_images: int = 4,
    score_threshold: float = 0.3,
    prefix: str | None = None,
    top_n: int = 10,
) -> list[str]:
    """Draw clean vs attacked detections (red) with the ground truth (dashed white) for the first images.

    The first ``num_images`` images of the batch are attacked and detected together (one batched call each for
    the clean and the attacked pass).  Writes ``<prefix>_<i>.png`` (default prefix: the file-safe attack name) and
    returns the paths.
    """
    if num_images < 1:
        raise ValueError(f"save_sample_detections: num_images must be >= 1, got {num_images}.")
    images = tf.convert_to_tensor(images, tf.float32)[:num_images]
    targets = {k: v[:num_images] for k, v in targets.items()}
    clean_dets, _ = detection_step(model, None)(images, targets)
    adv_dets, adv = detection_step(model, attack)(images, targets)
    return write_sample_pngs(images, clean_dets, adv, adv_dets, targets, output_dir,
                             prefix or file_stem(attack_name), class_names, num_images, score_threshold,
                             attack_name, top_n=top_n)


def samples_for_model(model, model_name, first_batch, batches, output_dir, class_names, num_images, shown,
                       cell_attacks):
    """Reuse the first batch each attack produced in this run (the clean detections come from the clean column);
    a cell whose first shard was computed earlier or by another worker attacks the first batch again."""
    if not cell_attacks or not any(a != "clean" for a in cell_attacks):
        return
    images, targets = next(iter(batches))
    for attack_name, attack in cell_attacks.items():
        if attack_name not in first_batch:
            detections, adv = detection_step(model, None if attack_name == "clean" else attack)(images, targets)
            first_batch[attack_name] = (images, adv, detections)
    clean_images, _, clean_dets = first_batch.get("clean") or (images, None, model.detect(images))
    for attack_name, (_, adv, adv_dets) in first_batch.items():
        if attack_name == "clean":
            continue
        write_sample_pngs(clean_images, clean_dets, adv, adv_dets, targets, os.path.join(output_dir, "samples"),
                          f"{file_stem(model_name)}_{file_stem(attack_name)}", class_names, num_images, shown[0],
                          attack_name, top_n=shown[1])

"""The plain SSD300 detector as a ``keras.Model`` that eats pixels and trains itself with the MultiBox loss.

Design choices (see ``docs/architecture.md``): the model takes float RGB in ``[0, 255]`` and subtracts the reference's
mean
first, so attacks, ε budgets and exports all live in pixel space; ``call`` returns the training-phase outputs
``{"loc", "logits"}``; ``detect`` adds decode + NMS (``models/base.py``); the step is the base class's, with the
MultiBox loss as ``compute_losses``.  Width and image size are configurable so tests and the demo run a tiny SSD of
the same structure.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from robustdet_tf.models.adversarial import AdversarialBatch, AdversarialSchedule, concat_targets
from robustdet_tf.models.base import DetectionModelBase, TrainingData
from robustdet_tf.models.detector import Detector


@keras.saving.register_keras_serializable(package="robustdet_tf")
class SSD(DetectionModelBase):
    """SSD300-VGG16 (no batch norm) with plain convolutions.

    ``call(images, training=None)`` → ``{"loc": [B, P, 4], "logits": [B, P, C]}`` for pixel-space RGB input.
    Training minimises ``loss_l + loss_c`` with coupled weight decay; compile with
    ``robustdet_tf.models.training.sgd()`` (lr 1e-3, momentum 0.9) to match the reference.

    ``adversarial`` (a dict of ``AttackSpec`` keys plus ``schedule``, e.g. ``{"method": "cls"}``) turns ``fit`` into
    the baselines' adversarial training (train_adv.py): the data must then yield
    ``((clean_images, clean_targets), (images_to_attack, their_targets))`` and each step trains on the clean half
    plus the current adversarial half (``clean_mix=True``, the reference) or on the adversarial half only.
    SSD-AT(A_cls) = ``cls``, SSD-AT(A_loc) = ``loc``, MTD = ``mtd``, CWAT = ``cwa``.
    """

    def __init__(self, *args, adversarial: Mapping | None = None, clean_mix: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.detector = Detector(conv="plain", kernel_initializer=self.kernel_initializer, **self.detector_kwargs())
        self.adversarial = None if adversarial is None else dict(adversarial)
        self.clean_mix = bool(clean_mix)
        self.adversary = None if adversarial is None else AdversarialSchedule.from_config(self.adversarial)
        self._init_trackers(("loss", "loss_l", "loss_c"))
        self.build()

    def call(self, images, training=None):
        out = self.detector(self.preprocess(images), training=training)
        return {"loc": out["loc"], "logits": out["logits"]}

    def compute_losses(self, data: TrainingData, adversarial: AdversarialBatch | None) -> dict[str, tf.Tensor]:
        """MultiBox over the clean images, the adversarial ones, or both (``clean_mix``)."""
        images, targets = data.clean, data.clean_targets
        if adversarial is not None:
            images, targets = adversarial.images, adversarial.targets
            if self.clean_mix:
                images = tf.concat([data.clean, adversarial.images], 0)
                targets = concat_targets(data.clean_targets, adversarial.targets)
        loss_l, loss_c = self.detection_loss(self(images, training=True), targets, global_norm=True)
        return {"loss": loss_l + loss_c, "loss_l": loss_l, "loss_c": loss_c}

    def get_config(self):
        return {**super().get_config(), "adversarial": self.adversarial, "clean_mix": self.clean_mix}

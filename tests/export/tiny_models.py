"""Tiny SSD / RobustDet(*) with well-behaved outputs for the export tests.

A RobustDet with its own random init saturates (scores of exactly 1.0, huge boxes), which makes detection
comparisons hinge on ties.  Expanding the tiny SSD (Keras' default init) the way the reference starts RobustDet
(docs/reference.md#expanding-a-clean-ssd), then perturbing each of the K kernels differently and shrinking the AID
head, gives moderate outputs, a real mixture π and kernels that differ, so the AAconv path matters.
"""

from __future__ import annotations

import keras
import numpy as np

from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD


def tiny_ssd(seed: int = 0) -> SSD:
    """A tiny SSD with Keras' default init drawn from ``seed`` (whichever tests ran before)."""
    keras.utils.set_random_seed(seed)
    model = SSD(**TINY_SSD)
    model.build()
    return model


def tiny_robustdet(ssd: SSD | None = None, cfr: bool = False, seed: int = 0) -> RobustDet:
    model = RobustDet.from_ssd(ssd or tiny_ssd(), aid_width=8, decoder_width=16, cfr=cfr)
    rng = np.random.default_rng(seed)
    for layer in model.detector.all_convs().values():
        convs = (layer.conv_mean, layer.conv_std) if cfr and hasattr(layer, "conv_mean") else (layer,)
        for conv in convs:
            noise = rng.uniform(0.8, 1.2, conv.kernel.shape).astype(np.float32)
            conv.kernel.assign(conv.kernel.numpy() * noise)
    fc = model.aid.get_layer("fc")
    fc.kernel.assign(fc.kernel.numpy() * 1e-3)
    return model

"""RobustDet (K = 4, no CFR) on VOC 07+12, trained from a clean SSD300 with interleaved MTD adversarial training.

Reference settings (docs/reference.md#optimiser-and-schedule): 40k optimiser steps of 16 clean + 16 adversarial
(+16 adc) images, SGD lr 1e-3
(the reference's lr steps never trigger), PGD-20 / MTD with ε = α = 8.  ``train.init_from`` must name a trained
SSD (``.keras``), e.g. the official ``ssd300_mAP_77.43_v2.pth`` imported with ``--mode=import``.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.experiment(common.robustdet_model("voc", cfr=False), common.voc_data(),
                               common.reference_train(steps=40_000, lr_steps=(80000, 100000, 120000)),
                               common.eval_settings("voc07"))
    config.train.init_from = "runs/ssd300_voc/model.keras"
    return config

"""SSD-AT(A_loc): SSD300 adversarially trained against the localisation loss (train_adv.py, loc).

16 clean + 16 adversarial images per step (``clean_mix``), loss_l + loss_c, interleaved PGD-20 with ε = α = 8
(spec §6.5, §9).  The reference's outer loop runs 20× more optimiser steps than ``max_iter`` (2.4 M for VOC); we
count optimiser steps, 120k by default.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = common.ssd300_model("voc")
    config.model.adversarial = common.adversarial("loc")
    config.model.clean_mix = True
    config.data = common.voc_data()
    config.train = common.reference_train(steps=120_000, lr_steps=(80_000, 100_000, 120_000))
    config.train.init_from = ""
    config.eval = common.eval_settings("voc07")
    return config

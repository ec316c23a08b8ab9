"""RobustDet* (K = 4 with CFR at conv4_3) on VOC 07+12: RobustDet plus the probabilistic conv4_3 and its decoder."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.experiment(common.robustdet_model("voc", cfr=True), common.voc_data(),
                               common.reference_train(steps=40_000, lr_steps=(80000, 100000, 120000)),
                               common.eval_settings("voc07"))
    config.train.init_from = "runs/ssd300_voc/model.keras"
    return config

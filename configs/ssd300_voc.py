"""SSD300-VGG16 on PASCAL VOC 07+12 trainval, evaluated on VOC2007 test (the clean baseline of the paper)."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.experiment(common.ssd300_model("voc"), common.voc_data(),
                               common.reference_train(steps=120_000, lr_steps=(80_000, 100_000, 120_000)),
                               common.eval_settings("voc07"))
    return config

"""RobustDet (K = 4) on COCO 2017 (120k steps).  81 classes; 201 to load the official checkpoint."""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.experiment(common.robustdet_model("coco", num_classes=81, cfr=False), common.coco_data(),
                               common.reference_train(steps=120_000, lr_steps=(180000, 220000, 260000)),
                               common.eval_settings("coco"))
    config.train.init_from = "runs/ssd300_coco/model.keras"
    return config

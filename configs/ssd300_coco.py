"""SSD300-VGG16 on MS-COCO 2017.

``num_classes`` is 81 (80 classes + background), which is correct; set ``--config.model.num_classes=201`` to load
the official COCO checkpoint, which inherited 201 from ssd.pytorch (docs/reference.md#coco).
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.experiment(common.ssd300_model("coco", num_classes=81), common.coco_data(),
                               common.reference_train(steps=400_000, lr_steps=(280_000, 360_000, 400_000)),
                               common.eval_settings("coco"))
    return config

"""Detection metrics: VOC and COCO mAP, their exportable states and paired bootstrap intervals."""

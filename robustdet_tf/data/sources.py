"""Config → data source: one place that knows which reader serves ``config.data``.

``config.data.dataset`` picks the family (``shapes`` synthetic, ``voc``, ``coco``), ``config.data.source`` the
reader (``tfds`` or ``local``).  Everything downstream (pipeline, training, evaluation) sees a
``DetectionSource`` in the example contract, whatever the origin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustdet_tf.data import coco, shapes, voc
from robustdet_tf.data.contract import DetectionSource
from robustdet_tf.labels import read_class_names


def _get(config: Mapping[str, Any], key: str, default=None):
    return config[key] if key in config else default


def shapes_source(num_images: int, image_size: int, seed: int, num_classes: int, max_objects: int) -> DetectionSource:
    """The synthetic set as a ``DetectionSource``."""
    return DetectionSource(
        dataset=shapes.shapes_dataset(num_images, image_size, seed, num_classes=num_classes, max_objects=max_objects),
        name=f"shapes seed {seed} ({num_images} images, {image_size}px)",
        class_names=shapes.SHAPES_CLASSES[:num_classes],
        num_examples=num_images,
    )


def load_source(data: Mapping[str, Any], role: str) -> DetectionSource:
    """The training (``role="train"``) or evaluation (``role="eval"``) source described by ``config.data``."""
    if role not in ("train", "eval"):
        raise ValueError(f"role must be 'train' or 'eval', got {role!r}")
    dataset = data["dataset"]
    if dataset == "shapes":
        needed = ("image_size", "num_classes", "max_objects", f"{role}_images", f"{role}_seed")
        missing = [key for key in needed if key not in data]
        if missing:
            raise ValueError(f"config.data.dataset='shapes' needs the synthetic set's keys, and this config has no "
                             f"{', '.join('data.' + k for k in missing)}: use --config=configs/demo.py (the shapes "
                             "config), or keep this config's dataset.")
        return shapes_source(
            data[f"{role}_images"],
            data["image_size"],
            data[f"{role}_seed"],
            data["num_classes"],
            data["max_objects"],
        )
    class_names = read_class_names(_get(data, "class_names"))
    if dataset == "voc":
        return voc.voc_dataset(
            data[f"{role}_years"],
            data[f"{role}_split"],
            source=data["source"],
            root=_get(data, "root"),
            data_dir=_get(data, "data_dir"),
            manual_dir=_get(data, "manual_dir"),
            download=_get(data, "download", False),
            class_names=class_names or voc.VOC_CLASSES,
            skip_bad=_get(data, "skip_bad", False),
            background_images=_get(data, "background_images", "keep"),
        )
    if dataset == "coco":
        split = data[f"{role}_split"]
        background = _get(data, "background_images", "drop")
        if data["source"] == "local":
            if _get(data, "root") is None:
                raise ValueError(
                    "config.data.root must name the COCO folder (annotations/ + images) for source='local'"
                )
            return coco.local_coco(data["root"], split, image_dir=_get(data, "image_dir"),
                                   skip_bad=_get(data, "skip_bad", False), class_names=class_names,
                                   background_images=background)
        if class_names is not None and class_names != coco.COCO_CLASSES:
            raise ValueError("config.data.class_names: tfds coco/2017 has the 80 COCO classes only; drop the key, or "
                             "read your own COCO-format folder with source='local' and config.data.root.")
        return coco.tfds_coco(split=split, data_dir=_get(data, "data_dir"), manual_dir=_get(data, "manual_dir"),
                              download=_get(data, "download", False), background_images=background)
    raise ValueError(f"config.data.dataset={dataset!r}: use 'shapes', 'voc' or 'coco'")

"""MS-COCO 2017 readers: a local ``annotations/instances_<split>.json`` + image folder, or tfds ``coco/2017``.

Both produce the example contract of ``contract.py``.

Labels.  The reference numbers the 80 COCO categories contiguously in official category-id order
(``coco_labels.txt``: id 1 -> 1, ..., id 90 -> 80, network class = label + 1), so ``labels`` are 0..79 in that
order and ``COCO_CATEGORY_IDS[label]`` is the official id.  ``category_id_to_label`` and
``label_to_category_id`` convert both ways (the COCO metric needs the official ids for pycocotools).  The
local reader derives the order from the json's categories sorted by id, which for the official files is
exactly ``COCO_CATEGORY_IDS``.  tfds numbers its ``label`` in the order of the json's category list, which
is the same order; the tfds reader checks the class names tfds recorded and remaps by name if they ever
differ.

Selection.  As in the reference, only images with at least one annotation are used (4,952 of val2017's
5,000) unless ``background_images="keep"``; crowd annotations do not disqualify an image.

Boxes.  COCO ``[x, y, w, h]`` in pixels becomes ``[x / W, y / H, (x + w) / W, (y + h) / H]`` with the size of
the decoded image (no 1-pixel offset: COCO coordinates are continuous).

Crowd boxes (``iscrowd=1``).  The reference keeps them as ordinary objects, for training and as attack
targets, so ``crowd="keep"`` (default, as the reference) gives them ``difficult=False``.  ``crowd="difficult"`` marks
them ``difficult=True`` instead: the training pipeline then drops them, as it drops VOC difficult objects,
and a VOC-style metric ignores detections matching them, which is what COCO's own evaluation does with crowd
regions (pycocotools reads ``iscrowd`` from the json itself, so the official COCO metric is unaffected).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from robustdet_tf import boxes as boxes_lib
from robustdet_tf.data import contract, tfds_helpers, validation
from robustdet_tf.data.contract import DatasetNotFoundError, DetectionSource

_LOG = logging.getLogger(__name__)

COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
"""Official COCO category id of each contiguous label 0..79."""

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
"""COCO class names indexed by contiguous label."""

COCO_ZIP_FILES = ("train2017.zip", "val2017.zip", "test2017.zip", "annotations_trainval2017.zip",
                  "image_info_test2017.zip")
"""Official archives tfds' ``coco/2017`` builder needs (all of them, under these names, in ``manual_dir``)."""

CROWD_MODES = ("keep", "difficult")

# Our split names -> COCO 2017 annotation split (reference: trainval -> train2017, test -> val2017).
_LOCAL_SPLITS = {"trainval": "train2017", "train": "train2017", "test": "val2017", "val": "val2017"}
_TFDS_SPLITS = {"trainval": "train", "train": "train", "train2017": "train", "test": "validation",
                "val": "validation", "val2017": "validation"}


def category_id_to_label(category_ids, category_id_order: Sequence[int] = COCO_CATEGORY_IDS) -> np.ndarray:
    """Official COCO category id(s) -> contiguous 0-based label(s); raises ``KeyError`` for unknown ids."""
    table = {int(c): i for i, c in enumerate(category_id_order)}
    ids = np.asarray(category_ids)
    try:
        return np.vectorize(lambda c: table[int(c)], otypes=[np.int32])(ids)
    except KeyError as e:
        raise KeyError(f"COCO category id {e.args[0]} is not one of {list(category_id_order)}") from None


def label_to_category_id(labels, category_id_order: Sequence[int] = COCO_CATEGORY_IDS) -> np.ndarray:
    """Contiguous 0-based label(s) -> official COCO category id(s) (network class c is label c - 1)."""
    order = np.asarray(category_id_order, np.int64)
    labels = np.asarray(labels, np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(order)):
        raise IndexError(f"COCO labels must lie in [0, {len(order)}); got {labels.min()}..{labels.max()}. "
                         "Detections use network classes (label + 1): subtract 1 first.")
    return order[labels]


@dataclasses.dataclass(frozen=True)
class CocoSource(DetectionSource):
    """A COCO ``DetectionSource`` that also knows the category ids behind its labels."""

    category_ids: tuple[int, ...] = COCO_CATEGORY_IDS

    @property
    def category_id_to_label(self) -> dict[int, int]:
        return {c: i for i, c in enumerate(self.category_ids)}

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return dict(enumerate(self.category_ids))


def _check_crowd(crowd: str) -> None:
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd={crowd!r} is not one of {CROWD_MODES}.")


def _resolve_files(root: str, split: str, image_dir: str | None,
                   annotation_file: str | None) -> tuple[str, str]:
    root = os.fspath(root)
    if annotation_file is None:
        annotation_file = os.path.join(root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(annotation_file):
        raise DatasetNotFoundError(
            f"COCO annotation file {annotation_file} not found. Download annotations_trainval2017.zip from "
            f"https://cocodataset.org and unzip it in {root} (it creates annotations/instances_{split}.json), "
            "pass annotation_file=, or use tfds_coco with data_dir/manual_dir.")
    if image_dir is None:
        candidates = [os.path.join(root, split), os.path.join(root, "2017_clean")]
        image_dir = next((c for c in candidates if os.path.isdir(c)), None)
        if image_dir is None:
            raise DatasetNotFoundError(
                f"No COCO image folder: expected {candidates[0]} (unzip {split}.zip in {root}) or the "
                f"reference's merged {candidates[1]}; or pass image_dir=.")
    elif not os.path.isdir(image_dir):
        raise DatasetNotFoundError(f"COCO image folder {image_dir} does not exist (unzip {split}.zip there).")
    return annotation_file, image_dir


def _load_coco(annotation_file: str):
    from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(annotation_file)
    except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise contract.BadExampleError(
            f"{annotation_file}: not a COCO instances json ({type(e).__name__}: {e}). Re-extract "
            "annotations_trainval2017.zip.", validation.BAD_ANNOTATION, annotation_file) from None


def local_coco(root: str, split: str = "val2017", image_dir: str | None = None,
               annotation_file: str | None = None, crowd: str = "keep", skip_bad: bool = False,
               validate: str = "header", class_names: Sequence[str] | None = None,
               background_images: str = "drop") -> CocoSource:
    """Read COCO from ``<root>/annotations/instances_<split>.json`` and ``<root>/<split>/`` (or ``2017_clean``).

    Args:
      root: folder holding ``annotations/`` and the image folder.
      split: "val2017", "train2017", or the reference's "test" (-> val2017) / "trainval" (-> train2017).
      image_dir: image folder, if not ``<root>/<split>`` or the reference's merged ``<root>/2017_clean``.
      annotation_file: json path, if not the standard one.
      crowd: "keep" (reference) or "difficult" (see module docstring).
      skip_bad: leave out bad images/objects (counted in ``.skipped``) instead of raising.
      validate: image check at construction, "header" (default), "full" or "none" (see validation.py).
      class_names: the classes to read, by category name (case-insensitive; ``config.data.class_names``), in
        label order; an annotation of another category is an unknown-class error.  ``None``: every category
        of the json, sorted by id (the official 80 for the official files).
      background_images: "drop" (default, the reference) images without annotations, or "keep" them as
        background-only examples (your own data; all 5,000 val2017 images).
    """
    validation.check_validate_mode(validate)
    contract.check_background_mode(background_images)
    _check_crowd(crowd)
    split = _LOCAL_SPLITS.get(split, split)
    annotation_file, image_dir = _resolve_files(root, split, image_dir, annotation_file)
    coco = _load_coco(annotation_file)
    category_ids, class_names = _select_categories(coco, class_names, annotation_file)
    index = {c: i for i, c in enumerate(category_ids)}
    log = validation.ProblemLog(skip_bad)
    images = []
    annotated = list(coco.imgToAnns.items())  # images with >= 1 annotation, in the reference's order
    background = [(i, []) for i in coco.imgs if i not in coco.imgToAnns] if background_images == "keep" else []
    for image_id, image_annotations in annotated + background:
        info = coco.imgs.get(image_id)
        if info is None:
            raise contract.BadExampleError(
                f"{annotation_file}: annotations refer to image id {image_id}, which is not in 'images'. "
                "Re-extract the annotation file.", validation.BAD_ANNOTATION, annotation_file)
        parsed = _parse_image(info, image_annotations, image_dir, annotation_file, index, crowd, validate, log)
        if parsed is not None:
            images.append(parsed)
    fields = validation.finished_source_fields(images, log, f"COCO {split} (local {root})", annotation_file,
                                              len(class_names))
    return CocoSource(class_names=class_names, category_ids=category_ids, **fields)


def _select_categories(coco, class_names: Sequence[str] | None,
                       annotation_file: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(category ids, class names) in label order: the json's categories sorted by id, or those named."""
    categories = sorted(coco.cats.values(), key=lambda c: c["id"])
    if class_names is None:
        return tuple(int(c["id"]) for c in categories), tuple(str(c["name"]) for c in categories)
    by_name = {str(c["name"]).strip().lower(): int(c["id"]) for c in categories}
    wanted = tuple(str(n).strip().lower() for n in class_names)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"config.data.class_names lists {unknown}, which are not categories of "
                         f"{annotation_file} (it has {sorted(by_name)}); correct the names or drop the key to use "
                         "every category of the file.")
    return tuple(by_name[n] for n in wanted), wanted


def _parse_image(info: dict, annotations: list, image_dir: str, annotation_file: str, index: dict[int, int],
                 crowd: str, validate: str, log: validation.ProblemLog) -> contract.ParsedImage | None:
    """Check and convert one image's annotations; ``None`` if it is skipped."""
    path = os.path.join(image_dir, info["file_name"])
    json_size = (int(info.get("height") or 0), int(info.get("width") or 0))
    try:
        size = validation.image_size(path, validate)
        if size is None:  # validate="none": trust the json, read the header only if it has no size
            size = json_size if min(json_size) > 0 else validation.image_size(path, "header")
    except contract.MissingFileError as e:
        log.report(validation.missing(f"image of COCO image id {info['id']} in {annotation_file} not found",
                                      e.reason, path, f"Unzip the complete image archive into {image_dir}"))
        return None
    except contract.BadExampleError as e:
        log.report(e)
        return None
    if min(json_size) > 0 and json_size != size:
        _LOG.warning("%s: json says HxW %s but the image is %s; using the image's size, as the reference",
                     path, json_size, size)
    height, width = size
    where = f"{annotation_file} (image {path})"
    boxes, labels, difficult = [], [], []
    for ann in annotations:
        what = f"annotation id {ann.get('id')}"
        if ann.get("category_id") not in index:
            log.report(validation.bad(f"{what} has category_id {ann.get('category_id')}, not one of the classes "
                                      "read", validation.UNKNOWN_CLASS, where, "Correct the annotation, or list "
                                      "its category in config.data.class_names"))
            continue
        try:
            bbox = np.array([float(v) for v in ann["bbox"]])
            if bbox.shape != (4,):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            log.report(validation.bad(f"{what} has no [x, y, w, h] bbox", validation.BAD_ANNOTATION, where,
                                      "Correct the annotation"))
            continue
        pixel_box = boxes_lib.convert_format(bbox, "xywh", "xyxy")
        error = validation.check_box(pixel_box, height, width, where, what)
        if error is not None:
            log.report(error)
            continue
        boxes.append(boxes_lib.convert_format(pixel_box, "xyxy", boxes_lib.BOX_FORMAT, height, width))
        labels.append(index[ann["category_id"]])
        difficult.append(crowd == "difficult" and bool(ann.get("iscrowd", 0)))
    if annotations and not labels:  # every annotation was bad and skipped: not a background image
        log.report(validation.bad("image has no usable annotation left", validation.NO_OBJECTS, where,
                                  "Correct its annotations"))
        return None
    return contract.ParsedImage(path=path, image_id=str(info["id"]), height=height, width=width,
                                boxes=np.array(boxes, np.float32).reshape(-1, 4), labels=np.array(labels, np.int32),
                                difficult=np.array(difficult, bool))


def tfds_label_remap(names: Sequence[str]) -> np.ndarray | None:
    """Map tfds' COCO label index -> our label, from the class names tfds recorded.

    Returns ``None`` when no remapping is needed: the names are ``COCO_CLASSES`` in order (official data), or
    tfds knows no names (``"0"``..``"79"``, e.g. mock data built from code), in which case tfds' json order is
    the category-id order.  Raises ``ValueError`` if the names are not the 80 COCO classes.
    """
    names = tuple(str(n).strip().lower().replace("_", " ") for n in names)
    if names == COCO_CLASSES or names == tuple(str(i) for i in range(len(names))):
        return None
    if sorted(names) != sorted(COCO_CLASSES):
        raise ValueError(f"tfds COCO label names {names[:5]}... are not the 80 COCO classes; cannot map them "
                         "to contiguous labels.")
    return np.array([COCO_CLASSES.index(n) for n in names], np.int32)


def tfds_coco(name: str = "coco/2017", split: str = "validation", data_dir: str | None = None,
              manual_dir: str | None = None, download: bool = False, crowd: str = "keep",
              background_images: str = "drop") -> CocoSource:
    """COCO through TensorFlow Datasets, converted to the example contract.

    Args:
      name: "coco/2017" (or "coco/2014").
      split: tfds split ("train", "validation") or the reference's "trainval" / "test" (-> validation).
      data_dir: tfds data directory holding the prepared dataset.
      manual_dir: folder with ``COCO_ZIP_FILES`` under their exact names; used only with ``download=True``.
      download: prepare the dataset if needed; otherwise an unprepared dataset raises
        ``DatasetNotFoundError`` and nothing is downloaded.
      crowd: "keep" (reference) or "difficult" (see module docstring).
      background_images: "drop" (reference) or "keep" the images without any annotation.

    Images without any annotation are filtered out, as in the reference (so ``num_examples`` is unknown), unless
    ``background_images="keep"``.
    tfds boxes are relative yxyx of COCO's continuous coordinates; corners are sorted (mock data gives
    unordered ones) and objects are cut to their fields' common length (mock data differs there too).
    """
    _check_crowd(crowd)
    contract.check_background_mode(background_images)
    tfds_split = _TFDS_SPLITS.get(split, split)
    builder = tfds_helpers.tfds_builder(name, data_dir, manual_dir, download, COCO_ZIP_FILES)
    dataset = tfds_helpers.tfds_as_dataset(builder, tfds_split, name, data_dir, COCO_ZIP_FILES)
    remap = tfds_label_remap(builder.info.features["objects"]["label"].names)

    def convert(example: dict) -> dict:
        image, boxes, labels, crowd_flags = tfds_helpers.tfds_objects(example, "is_crowd", pixel_offset=0.0)
        if remap is not None:
            labels = tf.gather(tf.constant(remap), labels)
        difficult = crowd_flags if crowd == "difficult" else tf.zeros_like(crowd_flags)
        image_id = tf.strings.as_string(example["image/id"])
        return contract.make_example(image, boxes, labels, difficult, image_id)

    dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    num_examples = None
    if background_images == "drop":
        dataset = dataset.filter(lambda ex: tf.size(ex["labels"]) > 0)
    else:
        num_examples = tfds_helpers.tfds_num_examples(builder, tfds_split)
    return CocoSource(dataset=dataset, name=f"{name} {split} (tfds)", class_names=COCO_CLASSES,
                      num_examples=num_examples, category_ids=COCO_CATEGORY_IDS)

"""PASCAL VOC readers: a local VOCdevkit tree, or TensorFlow Datasets' ``voc/2007`` and ``voc/2012``.

Both produce the example contract of ``contract.py`` (uint8 RGB image, ``rel_xyxy`` boxes, 0-based
labels in the order of ``VOC_CLASSES``, ``difficult`` flags, ``image_id``, ``original_size``).

Box convention.  VOC XML stores 1-based, inclusive pixel corners.  The reference (ssd.pytorch lineage)
subtracts 1 from every coordinate and divides by the image width (x) or height (y) of the *decoded* image:
``x_rel = (x_xml - 1) / W``, ``y_rel = (y_xml - 1) / H``.  Both readers reproduce exactly that, so a box's
relative corners do not depend on where the data came from:

* the local reader converts once, when the XML is parsed, using the true image size (from the JPEG header;
  ``<size>`` is only a fallback for ``validate="none"``, and an XML without ``<size>`` is fine);
* tfds stores ``x_xml / W`` (no offset), so the tfds reader subtracts ``1 / W`` (``1 / H``) in-graph.

Difficult objects are kept, with ``difficult=True``: the reference drops them for training and for attack
targets (the training pipeline does that) but the VOC metric needs them to ignore matching detections.

``voc_dataset`` selects data in the spirit of the reference's ``data_use``: ``"2007+2012"`` trainval for
training (07+12, 16,551 images), ``"2007"`` test for evaluation (4,952 images).
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from robustdet_tf import boxes as boxes_lib
from robustdet_tf.data import contract, tfds_helpers, validation
from robustdet_tf.data.contract import DatasetNotFoundError, DetectionSource
from robustdet_tf.labels import VOC_CLASSES

_LOG = logging.getLogger(__name__)


VOC_TAR_FILES = {
    "2007": {"trainval": "VOCtrainval_06-Nov-2007.tar", "test": "VOCtest_06-Nov-2007.tar"},
    "2012": {"trainval": "VOCtrainval_11-May-2012.tar", "test": "VOC2012test.tar"},
}
"""Official archives per year and split; tfds' VOC builder accepts them under these names in ``manual_dir``."""

# Our split names -> tfds' VOC split names (tfds calls train.txt "train" and val.txt "validation").
_TFDS_SPLITS = {"trainval": "train+validation", "train": "train", "val": "validation", "test": "test"}


def _archive_hint(year: str, split: str) -> str:
    tar = VOC_TAR_FILES.get(year, {}).get("test" if split == "test" else "trainval", "the VOC archive")
    return f"download {tar} and extract it there (tar xf {tar} creates VOCdevkit/VOC{year}/)"


def find_voc_dir(root: str, year: str) -> str:
    """Locate the VOC-format folder (the one holding ``Annotations/``, ``ImageSets/Main/`` and the images).

    ``root`` may be that folder itself, whatever its name (your own dataset), or hold it as ``VOC<year>``,
    ``VOCdevkit/VOC<year>`` or ``<year>`` (so ``year`` may be any folder name).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetNotFoundError(
            f"VOC root folder {root} does not exist. Create it and {_archive_hint(year, 'trainval')} "
            f"(and {VOC_TAR_FILES.get(year, {}).get('test', 'the test archive')} for the test split), "
            "point config.data.root at your own VOC-format folder, or use source='tfds' with data_dir/manual_dir.")
    candidates = [os.path.join(root, f"VOC{year}"), os.path.join(root, "VOCdevkit", f"VOC{year}"),
                  os.path.join(root, str(year)), root]
    for path in candidates:
        if os.path.isdir(os.path.join(path, "Annotations")) or os.path.isdir(os.path.join(path, "ImageSets")):
            return path
    raise DatasetNotFoundError(
        f"No VOC-format folder in {root}: expected {root} itself, {candidates[0]}, {candidates[1]} or "
        f"{candidates[2]} to contain ImageSets/Main/, Annotations/ and JPEGImages/. In {root}, "
        f"{_archive_hint(year, 'trainval')}.")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG", ".BMP")
"""Image files a VOC-format folder may hold in ``JPEGImages/`` (decoded by content, not by extension)."""


def find_image(voc_dir: str, image_id: str) -> str:
    """``JPEGImages/<image_id>.jpg`` or the first existing file with another ``IMAGE_EXTENSIONS`` suffix (the
    ``.jpg`` path if none exists, so the missing-image error names the usual file)."""
    stem = os.path.join(voc_dir, "JPEGImages", image_id)
    for extension in IMAGE_EXTENSIONS:
        if os.path.isfile(stem + extension):
            return stem + extension
    return stem + ".jpg"


def _read_split(voc_dir: str, year: str, split: str) -> list[str]:
    split_file = os.path.join(voc_dir, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise DatasetNotFoundError(
            f"Split list {split_file} not found: it lists one image id per line for split {split!r}. "
            f"Into the folder holding VOCdevkit, {_archive_hint(year, split)}.")
    with open(split_file, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise DatasetNotFoundError(f"Split list {split_file} is empty; it must list one image id per line.")
    return ids


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def parse_voc_xml(path: str) -> tuple[tuple[int, int] | None, list[tuple[str, tuple[float, ...], bool]]]:
    """Parse one VOC annotation: ``(size (H, W) or None, [(name, (xmin, ymin, xmax, ymax) 1-based, difficult)])``.

    Names are lower-cased and stripped, as in the reference.  Raises ``BadExampleError`` for unparsable XML
    or an object without a name or complete numeric ``<bndbox>``.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise validation.bad(f"annotation is not valid XML ({e})", validation.BAD_ANNOTATION, path,
                             "Re-extract the annotation from the VOC archive") from None
    size = None
    size_el = root.find("size")
    if size_el is not None:
        try:
            width, height = int(float(_text(size_el, "width"))), int(float(_text(size_el, "height")))
            if width > 0 and height > 0:
                size = (height, width)
        except (TypeError, ValueError):
            size = None  # unusable <size>: the image's own size is used instead
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        box_el = obj.find("bndbox")
        try:
            if not name or box_el is None:
                raise ValueError
            box = tuple(float(_text(box_el, tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise validation.bad(f"object #{i} lacks <name> or a numeric <bndbox> xmin/ymin/xmax/ymax",
                                 validation.BAD_ANNOTATION, path, "Correct the annotation") from None
        difficult = (_text(obj, "difficult") or "0") == "1"
        objects.append((name.lower(), box, difficult))
    return size, objects


def local_voc(root: str, year: str = "2007", split: str = "trainval",
              class_names: Sequence[str] = VOC_CLASSES, skip_bad: bool = False,
              validate: str = "header", background_images: str = "keep") -> DetectionSource:
    """Read a VOC-format tree: ``<root>/VOC<year>/{ImageSets/Main/<split>.txt, Annotations, JPEGImages}``,
    or your own VOC-format folder of any name (see ``find_voc_dir``).

    Annotations are parsed once here; the returned dataset only reads and decodes JPEGs, in split-file order.

    Args:
      root: the VOCdevkit folder (or the folder containing it), or the VOC-format folder itself.
      year: "2007", "2012", the suffix of a custom ``VOC<year>`` folder or the name of a sub-folder of root.
      split: name of the list in ``ImageSets/Main`` ("trainval", "test", "train", "val", ...).
      class_names: object classes; ``labels`` index this sequence.  Use your own for custom VOC-format data
        (``config.data.class_names``); names are matched case-insensitively.
      skip_bad: leave out bad images/objects (counted in ``.skipped``) instead of raising.
      validate: image check at construction, "header" (default), "full" or "none" (see validation.py).
      background_images: "keep" (default) an image whose annotation has no object, as a background-only
        example, or "drop" it.
    Raises:
      DatasetNotFoundError: the root folder or split list is missing.
      MissingFileError / BadExampleError: a bad annotation or image, unless ``skip_bad``.
    """
    validation.check_validate_mode(validate)
    contract.check_background_mode(background_images)
    year = str(year)
    class_names = tuple(str(n).strip().lower() for n in class_names)
    class_index = {n: i for i, n in enumerate(class_names)}
    voc_dir = find_voc_dir(root, year)
    log = validation.ProblemLog(skip_bad)
    images = []
    for image_id in _read_split(voc_dir, year, split):
        parsed = _parse_image(voc_dir, image_id, class_index, validate, log)
        if parsed is not None and (len(parsed.labels) or background_images == "keep"):
            images.append(parsed)
    fields = validation.finished_source_fields(images, log, f"VOC{year} {split} (local {voc_dir})", voc_dir,
                                              len(class_names))
    return DetectionSource(class_names=class_names, **fields)


def _parse_image(voc_dir: str, image_id: str, class_index: dict[str, int], validate: str,
                 log: validation.ProblemLog) -> contract.ParsedImage | None:
    """Parse, check and convert one image's annotation; ``None`` if it is skipped."""
    xml_path = os.path.join(voc_dir, "Annotations", f"{image_id}.xml")
    jpg_path = find_image(voc_dir, image_id)
    try:
        if not os.path.isfile(xml_path):
            raise validation.missing("annotation file not found (listed in the split file)",
                                     validation.MISSING_ANNOTATION, xml_path, "Re-extract the VOC archive")
        xml_size, objects = parse_voc_xml(xml_path)
        size = validation.image_size(jpg_path, validate)
        if size is None:  # validate="none": trust <size>, read the header only if it is missing
            size = xml_size or validation.image_size(jpg_path, "header")
        elif xml_size is not None and xml_size != size:
            _LOG.warning("%s: <size> says HxW %s but %s is %s; using the image's size, as the reference",
                         xml_path, xml_size, jpg_path, size)
    except (contract.BadExampleError, contract.MissingFileError) as e:
        log.report(e)
        return None
    height, width = size
    boxes, labels, difficult = [], [], []
    for i, (name, (xmin, ymin, xmax, ymax), is_difficult) in enumerate(objects):
        if name not in class_index:
            log.report(validation.bad(f"object #{i} has class {name!r}, which is not in class_names "
                                      f"{sorted(class_index)}", validation.UNKNOWN_CLASS, xml_path,
                                      "List the dataset's classes in config.data.class_names (a tuple of names "
                                      "or a text file with one name a line)"))
            continue
        pixel_box = (xmin - 1.0, ymin - 1.0, xmax - 1.0, ymax - 1.0)  # 1-based -> 0-based, as the reference
        error = validation.check_box(pixel_box, height, width, xml_path, f"object #{i} ({name})")
        if error is not None:
            log.report(error)
            continue
        boxes.append(boxes_lib.convert_format(np.array(pixel_box), "xyxy", boxes_lib.BOX_FORMAT, height, width))
        labels.append(class_index[name])
        difficult.append(is_difficult)
    if objects and not labels:  # every object was bad and skipped: not a background image
        log.report(validation.bad("image has no usable object left", validation.NO_OBJECTS, xml_path,
                                  "Correct its objects or remove the image from the split list"))
        return None
    return contract.ParsedImage(path=jpg_path, image_id=image_id, height=height, width=width,
                                boxes=np.array(boxes, np.float32).reshape(-1, 4), labels=np.array(labels, np.int32),
                                difficult=np.array(difficult, bool))


def tfds_voc(name: str = "voc/2007", split: str = "test", data_dir: str | None = None,
             manual_dir: str | None = None, download: bool = False) -> DetectionSource:
    """PASCAL VOC through TensorFlow Datasets, converted to the example contract.

    Args:
      name: "voc/2007" or "voc/2012".
      split: "trainval" (tfds train+validation), "train", "val", "test", or any tfds split expression.
      data_dir: tfds data directory holding the prepared dataset.
      manual_dir: folder with the official tar files (``VOC_TAR_FILES``) under their exact names; used only
        with ``download=True``.
      download: prepare the dataset if needed.  Without it nothing is downloaded or built: an unprepared
        dataset raises ``DatasetNotFoundError`` (tfds would otherwise retry a network download for minutes).

    Boxes: tfds gives relative (ymin, xmin, ymax, xmax) of the 1-based XML corners; they are converted to
    ``rel_xyxy`` with the reference's 1-pixel offset (see module docstring).  Corners are sorted (min, max)
    per axis: real tfds data is always ordered, but ``tfds.testing.mock_data`` produces random, unordered
    corners and even objects whose fields have different lengths (the reader keeps the common length).
    """
    year = name.split("/")[-1]
    archives = tuple(VOC_TAR_FILES.get(year, {}).values())
    if year == "2012" and split == "test":
        raise ValueError("VOC2012 test has no public annotations (tfds yields it without objects); "
                         "evaluate on VOC2007 test.")
    tfds_split = _TFDS_SPLITS.get(split, split)
    builder = tfds_helpers.tfds_builder(name, data_dir, manual_dir, download, archives)
    dataset = tfds_helpers.tfds_as_dataset(builder, tfds_split, name, data_dir, archives)
    dataset = dataset.map(_from_tfds_voc, num_parallel_calls=tf.data.AUTOTUNE)
    return DetectionSource(dataset=dataset, name=f"{name} {split} (tfds)", class_names=VOC_CLASSES,
                           num_examples=tfds_helpers.tfds_num_examples(builder, tfds_split))


def _from_tfds_voc(example: dict) -> dict:
    image, boxes, labels, difficult = tfds_helpers.tfds_objects(example, "is_difficult", pixel_offset=1.0)
    image_id = tf.strings.regex_replace(example["image/filename"], r"\.jpe?g$", "")
    return contract.make_example(image, boxes, labels, difficult, image_id)


def parse_voc_spec(spec: str) -> list[str]:
    """``"2007+2012"`` / ``"clean[2007]+clean[2012]"`` / ``"clean"`` -> list of years (bare name = 2007)."""
    years = []
    for item in str(spec).split("+"):
        item = item.strip()
        match = re.fullmatch(r"(\d{4})|clean\[(\d{4})\]|clean", item)
        if not match:
            raise ValueError(f"Bad VOC selection item {item!r} in {spec!r}: use years joined by '+', "
                             "e.g. '2007+2012', or the reference's 'clean[2007]+clean[2012]'.")
        years.append(match.group(1) or match.group(2) or "2007")  # bare "clean" is VOC2007, as in the reference
    return years


def distinct_folders(root: str, years: Sequence[str], spec: str) -> list[str]:
    """The years of a selection whose VOC-format folders differ, in order: a folder that several years resolve to
    (``root`` is the dataset folder itself, as your own data usually is, and the selection is ``2007+2012``) is read
    once, with a warning naming the folder and the keys to change, so no image counts twice."""
    folders: dict[str, list[str]] = {}
    for year in years:
        folders.setdefault(os.path.realpath(find_voc_dir(root, year)), []).append(year)
    for folder, named in folders.items():
        if len(named) > 1:
            _LOG.warning("the VOC selection %r names the folder %s %d times (as %s): it is read once. Name it once "
                         "(config.data.train_years / config.data.eval_years, e.g. %r) to silence this.", spec, folder,
                         len(named), " and ".join(repr(y) for y in named), named[0])
    return [named[0] for named in folders.values()]


def voc_dataset(spec: str = "2007+2012", split: str = "trainval", source: str = "local",
                root: str | None = None, data_dir: str | None = None, manual_dir: str | None = None,
                download: bool = False, class_names: Sequence[str] = VOC_CLASSES, skip_bad: bool = False,
                validate: str = "header", background_images: str = "keep") -> DetectionSource:
    """VOC selection as in the reference: the years of ``spec`` concatenated in order, one split.

    ``voc_dataset("2007+2012", "trainval")`` is the paper's training set, ``voc_dataset("2007", "test")``
    the evaluation set.  ``source="local"`` needs ``root`` (VOCdevkit); ``source="tfds"`` uses
    ``data_dir``/``manual_dir``/``download`` as in ``tfds_voc``.
    """
    years = parse_voc_spec(spec)
    if source == "local":
        if root is None:
            raise ValueError("voc_dataset(source='local') needs root=<VOCdevkit folder>.")
        years = distinct_folders(root, years, spec)
        sources = [local_voc(root, y, split, class_names=class_names, skip_bad=skip_bad, validate=validate,
                             background_images=background_images) for y in years]
    elif source == "tfds":
        years = list(dict.fromkeys(years))  # a year named twice is read once
        if tuple(str(n).strip().lower() for n in class_names) != VOC_CLASSES:
            raise ValueError("source='tfds' only provides the 20 standard VOC classes: drop config.data.class_names "
                             "or read your own VOC-format folder with source='local' and config.data.root.")
        sources = [tfds_voc(f"voc/{y}", split, data_dir=data_dir, manual_dir=manual_dir, download=download)
                   for y in years]
    else:
        raise ValueError(f"source={source!r}: use 'local' or 'tfds'.")
    if len(sources) == 1:
        return sources[0]
    return contract.concatenate(sources, f"VOC{'+'.join(years)} {split} ({source})")

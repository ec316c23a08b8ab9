"""Tiny on-disk VOC and COCO datasets for tests (readers, pipeline, CLI).

Images are real JPEGs written with PIL: a dim noisy background with every object's box filled in a
class-dependent colour, so a test can also check that boxes line up with image content.  Each writer returns
what it wrote, so a test can compute the expected boxes independently of the readers.

Typical use::

    tree = write_voc_tree(tmp_path)                      # VOCdevkit/VOC2007, trainval, 3 images
    write_voc_tree(tmp_path, split="test", seed=1)       # add a test split to the same tree
    source = local_voc(tree.root, "2007", "trainval")

    coco = write_coco(tmp_path)                          # annotations/instances_val2017.json + val2017/
    source = local_coco(coco.root, "val2017")

An image's ``image`` field chooses how its file is written: "ok", "truncated" (first half of a valid JPEG),
"garbage" (not an image at all) or "missing" (no file).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import time
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np
import pytest
from PIL import Image

from robustdet_tf.data import contract
from robustdet_tf.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from robustdet_tf.data.voc import VOC_CLASSES

IMAGE_MODES = ("ok", "truncated", "garbage", "missing")


@dataclasses.dataclass
class FakeObject:
    """A VOC object: class name, 1-based inclusive pixel corners (xmin, ymin, xmax, ymax), difficult flag."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False


@dataclasses.dataclass
class FakeImage:
    """What every fake image has: an id and a size; ``image`` (a field of each kind) is one of IMAGE_MODES."""

    image_id: str | int
    height: int = 48
    width: int = 64


@dataclasses.dataclass
class FakeVocImage(FakeImage):
    """One VOC image; ``xml_size`` overrides the written ``<size>`` (H, W); ``write_size=False`` omits it."""

    objects: list[FakeObject] = dataclasses.field(default_factory=list)
    write_size: bool = True
    xml_size: tuple[int, int] | None = None
    image: str = "ok"


@dataclasses.dataclass
class FakeVocTree:
    root: pathlib.Path  # the VOCdevkit folder
    year: str
    split: str
    images: list[FakeVocImage]


@dataclasses.dataclass
class FakeAnnotation:
    """A COCO annotation: official category id, [x, y, w, h] in pixels, crowd flag."""

    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: bool = False


@dataclasses.dataclass
class FakeCocoImage(FakeImage):
    """One COCO image; ``file_name`` overrides the 12-digit default name."""

    annotations: list[FakeAnnotation] = dataclasses.field(default_factory=list)
    file_name: str | None = None
    image: str = "ok"

    @property
    def name(self) -> str:
        return self.file_name or f"{self.image_id:012d}.jpg"


@dataclasses.dataclass
class FakeCoco:
    root: pathlib.Path
    split: str
    annotation_file: pathlib.Path
    image_dir: pathlib.Path
    images: list[FakeCocoImage]


def _colour(index: int) -> tuple[int, int, int]:
    return (40 + (index * 67) % 200, 40 + (index * 131) % 200, 40 + (index * 29) % 200)


def _jpeg_bytes(height: int, width: int, rects: Sequence[tuple[float, float, float, float, int]],
                seed: int) -> bytes:
    """A JPEG of size HxW with each (x0, y0, x1, y1, colour index) rectangle (0-based pixels) filled."""
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 30, size=(height, width, 3)).astype(np.uint8)
    for x0, y0, x1, y1, colour in rects:
        pixels[int(max(y0, 0)):int(np.ceil(min(y1, height))), int(max(x0, 0)):int(np.ceil(min(x1, width)))] = \
            _colour(colour)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_image(path: str, mode: str, height: int, width: int, rects, seed: int) -> None:
    if mode not in IMAGE_MODES:
        raise ValueError(f"image mode {mode!r} not in {IMAGE_MODES}")
    if mode == "missing":
        return
    data = _jpeg_bytes(height, width, rects, seed)
    if mode == "truncated":
        data = data[: len(data) // 2]
    elif mode == "garbage":
        data = b"this is not an image\n" * 8
    with open(path, "wb") as f:
        f.write(data)


def default_voc_images(num_images: int = 3, height: int = 48, width: int = 64, seed: int = 0,
                       prefix: str = "") -> list[FakeVocImage]:
    """Random but reproducible images with 1-3 objects each; image 0 has a difficult object, image 1 a box
    touching the bottom-right border (xmax = width, ymax = height in 1-based coordinates)."""
    rng = np.random.RandomState(seed)
    images = []
    for i in range(num_images):
        objects = []
        for j in range(1 + i % 3):
            x0 = int(rng.randint(1, width // 2))
            y0 = int(rng.randint(1, height // 2))
            x1 = int(rng.randint(x0 + 4, width + 1))
            y1 = int(rng.randint(y0 + 4, height + 1))
            objects.append(FakeObject(VOC_CLASSES[int(rng.randint(len(VOC_CLASSES)))], (x0, y0, x1, y1),
                                      difficult=(i == 0 and j == 0)))
        if i == 1:
            objects[0].box = (objects[0].box[0], objects[0].box[1], width, height)
        images.append(FakeVocImage(f"{prefix}{seed:02d}{i:04d}", height, width, objects))
    return images


def _voc_xml(image: FakeVocImage, year: str) -> str:
    lines = ["<annotation>", f"  <folder>VOC{year}</folder>", f"  <filename>{image.image_id}.jpg</filename>"]
    if image.write_size:
        h, w = image.xml_size or (image.height, image.width)
        lines += ["  <size>", f"    <width>{w}</width>", f"    <height>{h}</height>", "    <depth>3</depth>",
                  "  </size>"]
    for obj in image.objects:
        xmin, ymin, xmax, ymax = obj.box
        lines += ["  <object>", f"    <name>{escape(obj.name)}</name>", "    <pose>Unspecified</pose>",
                  "    <truncated>0</truncated>", f"    <difficult>{int(obj.difficult)}</difficult>",
                  "    <bndbox>", f"      <xmin>{xmin:g}</xmin>", f"      <ymin>{ymin:g}</ymin>",
                  f"      <xmax>{xmax:g}</xmax>", f"      <ymax>{ymax:g}</ymax>", "    </bndbox>", "  </object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write_voc_tree(root, year: str = "2007", split: str = "trainval",
                   images: Sequence[FakeVocImage] | None = None, num_images: int = 3, height: int = 48,
                   width: int = 64, seed: int = 0) -> FakeVocTree:
    """Write ``<root>/VOCdevkit/VOC<year>/{ImageSets/Main/<split>.txt, Annotations, JPEGImages}``.

    Call again with another split/year to extend the same tree.  ``images`` defaults to
    ``default_voc_images(num_images, height, width, seed)``.
    """
    images = list(images) if images is not None else default_voc_images(num_images, height, width, seed)
    devkit = pathlib.Path(root) / "VOCdevkit"
    voc_dir = devkit / f"VOC{year}"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (voc_dir / sub).mkdir(parents=True, exist_ok=True)
    names = {n: i for i, n in enumerate(VOC_CLASSES)}
    for k, image in enumerate(images):
        rects = [(o.box[0] - 1, o.box[1] - 1, o.box[2], o.box[3], names.get(o.name, 0)) for o in image.objects]
        _write_image(os.fspath(voc_dir / "JPEGImages" / f"{image.image_id}.jpg"), image.image,
                     image.height, image.width, rects, seed * 1000 + k)
        (voc_dir / "Annotations" / f"{image.image_id}.xml").write_text(_voc_xml(image, year))
    (voc_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{im.image_id}\n" for im in images))
    return FakeVocTree(devkit, str(year), split, images)


def default_coco_images(num_images: int = 3, height: int = 48, width: int = 64, seed: int = 0,
                        category_ids: Sequence[int] = (1, 18, 90)) -> list[FakeCocoImage]:
    """Random but reproducible images with 1-3 annotations each; image 0's last annotation is a crowd."""
    rng = np.random.RandomState(seed)
    images = []
    for i in range(num_images):
        annotations = []
        for _ in range(1 + i % 3):
            x, y = float(rng.uniform(0, width / 2)), float(rng.uniform(0, height / 2))
            w, h = float(rng.uniform(4, width - x)), float(rng.uniform(4, height - y))
            annotations.append(FakeAnnotation(int(category_ids[int(rng.randint(len(category_ids)))]),
                                              (round(x, 2), round(y, 2), round(w, 2), round(h, 2))))
        if i == 0:
            annotations[-1].iscrowd = True
        images.append(FakeCocoImage(image_id=100 + 7 * i + seed * 1000, height=height, width=width,
                                    annotations=annotations))
    return images


def write_coco(root, split: str = "val2017", images: Sequence[FakeCocoImage] | None = None,
               num_images: int = 3, height: int = 48, width: int = 64, seed: int = 0,
               unannotated_images: int = 0,
               categories: Sequence[tuple[int, str]] | None = None) -> FakeCoco:
    """Write ``<root>/annotations/instances_<split>.json`` and the JPEGs in ``<root>/<split>/``.

    ``categories`` defaults to the 80 official (id, name) pairs.  ``unannotated_images`` extra images are
    listed in the json without annotations (the readers must leave them out, as the reference does).
    """
    images = list(images) if images is not None else default_coco_images(num_images, height, width, seed)
    if categories is None:
        categories = list(zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True))
    root = pathlib.Path(root)
    image_dir = root / split
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    all_images = images + [FakeCocoImage(image_id=900000 + seed * 1000 + k, height=height, width=width)
                           for k in range(unannotated_images)]
    colour = {cid: i for i, (cid, _) in enumerate(categories)}
    image_entries, annotation_entries = [], []
    for k, image in enumerate(all_images):
        rects = [(a.bbox[0], a.bbox[1], a.bbox[0] + a.bbox[2], a.bbox[1] + a.bbox[3], colour.get(a.category_id, 0))
                 for a in image.annotations]
        _write_image(os.fspath(image_dir / image.name), image.image, image.height, image.width, rects,
                     seed * 1000 + k)
        image_entries.append({"id": image.image_id, "file_name": image.name, "height": image.height,
                              "width": image.width})
        for a in image.annotations:
            annotation_entries.append({
                "id": len(annotation_entries) + 1, "image_id": image.image_id, "category_id": a.category_id,
                "bbox": list(a.bbox), "area": float(a.bbox[2] * a.bbox[3]), "iscrowd": int(a.iscrowd),
                "segmentation": []})
    payload = {"info": {"description": "fake COCO for tests"}, "licenses": [], "images": image_entries,
               "annotations": annotation_entries,
               "categories": [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in categories]}
    annotation_file = root / "annotations" / f"instances_{split}.json"
    annotation_file.write_text(json.dumps(payload))
    return FakeCoco(root, split, annotation_file, image_dir, images)


def assert_unprepared_tfds_refused(load, tmp_path: pathlib.Path, archives: Sequence[str], present: Sequence[str],
                                   missing: str) -> None:
    """``load(data_dir=..., **kw)`` on an unprepared tfds folder raises DatasetNotFoundError naming the folder,
    ``manual_dir`` and every archive, and with ``download=True`` and a manual folder holding only ``present`` it
    names the ``missing`` archive; neither call waits on the network."""
    start = time.time()
    with pytest.raises(contract.DatasetNotFoundError) as info:
        load(data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "manual_dir" in message
    assert all(name in message for name in archives)
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in present:
        (manual / name).write_bytes(b"")
    with pytest.raises(contract.DatasetNotFoundError, match=f"lacks {missing}"):
        load(data_dir=str(tmp_path), manual_dir=str(manual), download=True)
    assert time.time() - start < 30  # no network retry happened


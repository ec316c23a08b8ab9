"""A COCO ground truth from what users hold (an ``instances_*.json`` path, a loaded ``COCO``, its dataset dict), and
the category order of the reference's ``coco_labels.txt``; pycocotools' printing kept out of the console.

Why a module of its own: the metric (``coco_metric.py``) scores, this reads and checks annotations, and callers
that only need the category order (a config's label map) need not import the metric.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from typing import Any

from pycocotools.coco import COCO


def quiet(verbose: bool) -> contextlib.AbstractContextManager:
    """pycocotools' prints captured unless ``verbose``."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_coco(annotations: str | os.PathLike | COCO | Mapping[str, Any], verbose: bool = False) -> COCO:
    """Returns a ``COCO`` object from a json path, an existing ``COCO`` or a dataset dict."""
    if isinstance(annotations, COCO):
        return annotations
    if isinstance(annotations, (str, os.PathLike)):
        path = os.fspath(annotations)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"COCO annotation file {path!r} does not exist; pass the path of e.g. "
                                    "annotations/instances_val2017.json, a pycocotools COCO object, or None to "
                                    "build the ground truth from the target batches.")
        with quiet(verbose):
            return COCO(path)
    if isinstance(annotations, Mapping):
        missing = {"images", "annotations", "categories"} - set(annotations)
        if missing:
            raise ValueError(f"COCO annotation dict lacks {sorted(missing)}; it needs 'images', 'annotations' "
                             "and 'categories' like an instances_*.json file.")
        coco = COCO()
        coco.dataset = dict(annotations)
        with quiet(verbose):
            coco.createIndex()
        return coco
    raise TypeError(f"annotations must be a path, a pycocotools COCO, a dataset dict or None; got "
                    f"{type(annotations).__name__}.")


def contiguous_category_ids(annotations: str | os.PathLike | COCO | Mapping[str, Any]) -> list[int]:
    """Category ids in ascending order: entry ``c - 1`` is the id of network class ``c``.

    This is the contiguous order of the reference's ``coco_labels.txt`` for COCO 2017 (1..80 ↔ 1..90 with gaps),
    ready to pass as ``category_ids``.
    """
    return sorted(load_coco(annotations).getCatIds())

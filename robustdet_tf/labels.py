"""Label maps: the object class names of a dataset, from a config value, and the ``num_classes`` they imply.

Why a module of its own: the class list is decided once (``config.data.class_names``) and then read by the data
readers (which names to accept), the model factory (``num_classes`` = background + classes, and the label map saved
inside the ``.keras`` file), evaluation, plots and export.  Everything here is plain Python, so every room can use it.

A class list is given as a tuple of names (``--config.data.class_names="('tree', 'bush')"``; absl turns a single
bare word into a 1-tuple) or as the path of a text file with one name a line (blank lines and ``#`` comments are
ignored).  Names are compared case-insensitively and stored lower-cased, as VOC annotations are read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""PASCAL VOC's 20 object classes (docs/reference.md#voc-data): ``labels`` index this tuple, network class =
index + 1.  The one list: the VOC readers, the VOC metric and the configs import it from here."""

CLASS_NAMES_KEY = "config.data.class_names"
NUM_CLASSES_KEY = "config.model.num_classes"


def _looks_like_file(value: str) -> bool:
    return os.path.isfile(value) or value.endswith((".txt", ".names", ".labels")) or os.sep in value


def read_class_names(value: str | os.PathLike | Sequence[str] | None,
                     key: str = CLASS_NAMES_KEY) -> tuple[str, ...] | None:
    """The class names ``value`` stands for, lower-cased; ``None`` for ``None`` or an empty value.

    A string, or a 1-tuple holding an existing file path (what absl makes of ``--config.data.class_names=f.txt``),
    is read as a text file.  Raises ``ValueError`` naming ``key`` for a missing file, an empty list, an empty name
    or a name given twice.
    """
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if not value.strip():
            return None
        return _read_file(value, key)
    names = tuple(str(v) for v in value)
    if len(names) == 1 and _looks_like_file(names[0]):
        return _read_file(names[0], key)
    if not names:
        return None
    return _checked(names, key, "the tuple")


def _read_file(path: str, key: str) -> tuple[str, ...]:
    if not os.path.isfile(path):
        raise ValueError(
            f"{key}={path!r}: no such file. Give a text file with one class name a line, or the names themselves "
            f"as a tuple, e.g. --{key}=\"('tree', 'bush')\"."
        )
    with open(path, encoding="utf-8") as f:
        names = tuple(line.split("#", 1)[0].strip() for line in f)
    return _checked(tuple(n for n in names if n), key, path)


def _checked(names: tuple[str, ...], key: str, where: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in names)
    if not names:
        raise ValueError(f"{key}: {where} lists no class name; give at least one.")
    if any(not n for n in names):
        raise ValueError(f"{key}: {where} holds an empty class name: {names}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{key}: {where} lists {repeated} more than once (names are compared case-insensitively).")
    return names


def num_classes_for(class_names: Sequence[str] | None, num_classes: int | None) -> int:
    """The network's class count: ``num_classes`` if given (at least background + the classes), else derived."""
    if num_classes is None:
        if not class_names:
            raise ValueError(f"neither {NUM_CLASSES_KEY} nor {CLASS_NAMES_KEY} is set: give the class names (the "
                             "count follows) or the number of network classes (background included).")
        return len(class_names) + 1
    num_classes = int(num_classes)
    if class_names and num_classes < len(class_names) + 1:
        raise ValueError(
            f"{NUM_CLASSES_KEY}={num_classes} is too small for the {len(class_names)} classes of {CLASS_NAMES_KEY} "
            f"(it counts the background too: {len(class_names) + 1}); drop {NUM_CLASSES_KEY} to derive it."
        )
    return num_classes

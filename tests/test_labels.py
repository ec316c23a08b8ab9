"""Class lists from the config: a tuple or a text file, checked, and the num_classes they imply."""

import pytest

from robustdet_tf.labels import num_classes_for, read_class_names


def test_a_tuple_is_lower_cased_and_kept_in_order():
    assert read_class_names(("Tree", " Bush ")) == ("tree", "bush")
    assert read_class_names(None) is None and read_class_names(()) is None and read_class_names("") is None


def test_a_text_file_one_name_a_line(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# aerial survey\nTree\n\nbush  # low ones\n")
    assert read_class_names(str(path)) == ("tree", "bush")
    assert read_class_names((str(path),)) == ("tree", "bush")  # what absl makes of --config.data.class_names=f.txt
    assert read_class_names(path) == ("tree", "bush")


@pytest.mark.parametrize("value, message", [
    (("tree", "Tree"), r"\['tree'\] more than once"),
    (("tree", " "), "empty class name"),
    (("missing/classes.txt",), "no such file"),
    ("missing.txt", "config.data.class_names='missing.txt': no such file"),
])
def test_bad_lists_name_the_key(value, message):
    with pytest.raises(ValueError, match=message) as info:
        read_class_names(value)
    assert "config.data.class_names" in str(info.value)


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="lists no class name"):
        read_class_names(str(path))


def test_num_classes_follows_the_names_unless_given():
    assert num_classes_for(("tree",), None) == 2
    assert num_classes_for(("tree",), 5) == 5  # more is allowed (the reference's COCO 201)
    assert num_classes_for(None, 21) == 21
    with pytest.raises(ValueError, match="too small"):
        num_classes_for(("a", "b"), 2)
    with pytest.raises(ValueError, match="neither config.model.num_classes nor config.data.class_names"):
        num_classes_for(None, None)


def test_one_voc_class_list():
    """The VOC readers, the VOC metric and the configs share the one list of ``labels.py``."""
    from configs import common
    from robustdet_tf import labels
    from robustdet_tf.data import voc
    from robustdet_tf.metrics import voc as voc_metric

    assert voc.VOC_CLASSES is labels.VOC_CLASSES and voc_metric.VOC_CLASSES is labels.VOC_CLASSES
    assert common.VOC_CLASS_NAMES is labels.VOC_CLASSES and len(labels.VOC_CLASSES) == 20

"""Tests for robustdet_tf.data.coco: local json + folder, tfds coco/2017 (mocked, offline), label maps, bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import functools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from robustdet_tf.data import coco, contract, validation  # noqa: E402
from tests.data.fake_datasets import FakeAnnotation, FakeCocoImage, assert_unprepared_tfds_refused, write_coco  # noqa: E402


def _examples(source):
    return [{k: v.numpy() for k, v in ex.items()} for ex in source.dataset]


def _rel(bbox, height, width):
    x, y, w, h = bbox
    return [x / width, y / height, (x + w) / width, (y + h) / height]


IMAGES = [
    FakeCocoImage(7, 40, 60, [FakeAnnotation(90, (1.5, 2.25, 20.0, 10.5)),
                              FakeAnnotation(1, (0.0, 0.0, 60.0, 40.0), iscrowd=True)]),
    FakeCocoImage(3, 30, 50, [FakeAnnotation(13, (10.0, 5.0, 30.5, 20.0))]),
]


def test_label_maps_follow_official_category_id_order():
    assert len(coco.COCO_CATEGORY_IDS) == 80 == len(coco.COCO_CLASSES) == len(set(coco.COCO_CATEGORY_IDS))
    assert list(coco.COCO_CATEGORY_IDS) == sorted(coco.COCO_CATEGORY_IDS)
    np.testing.assert_array_equal(coco.category_id_to_label([1, 13, 27, 90]), [0, 11, 24, 79])
    np.testing.assert_array_equal(coco.label_to_category_id([0, 11, 24, 79]), [1, 13, 27, 90])
    everything = np.arange(80)
    np.testing.assert_array_equal(coco.category_id_to_label(coco.label_to_category_id(everything)), everything)
    assert coco.COCO_CLASSES[coco.category_id_to_label(18)] == "dog"
    with pytest.raises(KeyError, match="12"):
        coco.category_id_to_label([1, 12])
    with pytest.raises(IndexError, match="subtract 1"):
        coco.label_to_category_id([80])


def test_local_coco_reads_boxes_and_labels_exactly(tmp_path):
    fake = write_coco(tmp_path, "val2017", images=IMAGES, unannotated_images=1)
    source = coco.local_coco(fake.root, "val2017")
    assert source.dataset.element_spec == contract.EXAMPLE_SPEC
    assert source.num_examples == 2 and source.skipped == {}  # the image without annotations is left out
    assert source.class_names == coco.COCO_CLASSES and source.category_ids == coco.COCO_CATEGORY_IDS
    assert source.category_id_to_label[90] == 79 and source.label_to_category_id[11] == 13
    first, second = _examples(source)
    assert first["image_id"] == b"7" and second["image_id"] == b"3"  # annotation order, as the reference
    np.testing.assert_allclose(first["boxes"], [_rel(IMAGES[0].annotations[0].bbox, 40, 60),
                                                _rel(IMAGES[0].annotations[1].bbox, 40, 60)], atol=1e-7)
    np.testing.assert_array_equal(first["labels"], [79, 0])
    np.testing.assert_array_equal(first["difficult"], [False, False])  # crowd kept as an ordinary object
    np.testing.assert_array_equal(first["original_size"], [40, 60])
    np.testing.assert_allclose(second["boxes"], [_rel(IMAGES[1].annotations[0].bbox, 30, 50)], atol=1e-7)
    np.testing.assert_array_equal(second["labels"], [11])
    assert second["image"].shape == (30, 50, 3) and second["image"].dtype == np.uint8


def test_crowd_can_be_marked_difficult(tmp_path):
    fake = write_coco(tmp_path, images=IMAGES)
    first, second = _examples(coco.local_coco(fake.root, crowd="difficult"))
    np.testing.assert_array_equal(first["difficult"], [False, True])
    np.testing.assert_array_equal(second["difficult"], [False])
    with pytest.raises(ValueError, match="crowd"):
        coco.local_coco(fake.root, crowd="drop")


def test_reference_split_names_and_merged_image_folder(tmp_path):
    fake = write_coco(tmp_path, "val2017", images=IMAGES)
    fake.image_dir.rename(tmp_path / "2017_clean")  # the reference keeps train and val images together
    source = coco.local_coco(tmp_path, "test")  # reference: test -> val2017
    assert source.num_examples == 2 and "val2017" in source.name
    assert len(_examples(source)) == 2


def test_custom_categories_are_numbered_in_id_order(tmp_path):
    images = [FakeCocoImage(1, annotations=[FakeAnnotation(5, (1, 1, 9, 9)), FakeAnnotation(3, (2, 2, 5, 5))])]
    fake = write_coco(tmp_path, images=images, categories=[(5, "five"), (3, "three")])
    source = coco.local_coco(fake.root)
    assert source.class_names == ("three", "five") and source.category_ids == (3, 5)
    np.testing.assert_array_equal(_examples(source)[0]["labels"], [1, 0])
    assert source.label_to_category_id == {0: 3, 1: 5}


# ----------------------------------------------------------------------------------------------- bad input


def test_missing_annotation_file_and_image_folder(tmp_path):
    with pytest.raises(contract.DatasetNotFoundError) as info:
        coco.local_coco(tmp_path, "val2017")
    assert str(tmp_path / "annotations" / "instances_val2017.json") in str(info.value)
    assert "annotations_trainval2017.zip" in str(info.value)
    fake = write_coco(tmp_path, images=IMAGES)
    fake.image_dir.rename(tmp_path / "elsewhere")
    with pytest.raises(contract.DatasetNotFoundError, match="val2017.zip"):
        coco.local_coco(tmp_path, "val2017")
    assert coco.local_coco(tmp_path, image_dir=str(tmp_path / "elsewhere")).num_examples == 2


def test_not_a_coco_json(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{broken")
    (tmp_path / "val2017").mkdir()
    with pytest.raises(ValueError, match="instances_val2017.json"):
        coco.local_coco(tmp_path)


GOOD = FakeAnnotation(1, (4.0, 4.0, 20.0, 12.0))

BAD_CASES = {
    # name: (annotations and image mode of the bad image, error type, reasons counted, bad image survives)
    "missing_image": ([GOOD], "missing", contract.MissingFileError, {validation.MISSING_IMAGE: 1}, False),
    "truncated_jpeg": ([GOOD], "truncated", contract.BadExampleError, {validation.CORRUPT_IMAGE: 1}, False),
    "unknown_category": ([GOOD, FakeAnnotation(12, (1, 1, 5, 5))], "ok", contract.BadExampleError,
                         {validation.UNKNOWN_CLASS: 1}, True),
    "zero_width_box": ([GOOD, FakeAnnotation(2, (5, 5, 0, 8))], "ok", contract.BadExampleError,
                       {validation.DEGENERATE_BOX: 1}, True),
    "box_outside": ([GOOD, FakeAnnotation(2, (50, 30, 40, 30))], "ok", contract.BadExampleError,
                    {validation.BOX_OUTSIDE_IMAGE: 1}, True),
    "only_bad_objects": ([FakeAnnotation(2, (5, 5, 0, 8))], "ok", contract.BadExampleError,
                         {validation.DEGENERATE_BOX: 1, validation.NO_OBJECTS: 1}, False),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_clearly_or_is_skipped_and_counted(tmp_path, case):
    annotations, mode, error_type, counts, survives = BAD_CASES[case]
    images = [FakeCocoImage(1, annotations=[GOOD]),
              FakeCocoImage(2, annotations=annotations, file_name="bad_image.jpg", image=mode)]
    fake = write_coco(tmp_path, images=images)
    with pytest.raises(error_type) as info:
        coco.local_coco(fake.root)
    assert info.value.reason == next(iter(counts))
    assert "bad_image.jpg" in str(info.value) and "skip_bad=True" in str(info.value)
    source = coco.local_coco(fake.root, skip_bad=True)
    assert source.skipped == counts
    got = _examples(source)
    assert [g["image_id"] for g in got] == ([b"1", b"2"] if survives else [b"1"])
    for g in got:
        np.testing.assert_allclose(g["boxes"], [_rel(GOOD.bbox, 48, 64)], atol=1e-7)
        np.testing.assert_array_equal(g["labels"], [0])


# ----------------------------------------------------------------------------------------------------- tfds


def test_tfds_label_remap():
    assert coco.tfds_label_remap(coco.COCO_CLASSES) is None
    assert coco.tfds_label_remap([str(i) for i in range(80)]) is None  # names unknown (built from code)
    shuffled = list(reversed(coco.COCO_CLASSES))
    np.testing.assert_array_equal(coco.tfds_label_remap(shuffled), np.arange(80)[::-1])
    with pytest.raises(ValueError, match="80 COCO classes"):
        coco.tfds_label_remap(["cat", "dog"])


def test_tfds_mock_data_follows_the_contract():
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        source = coco.tfds_coco("coco/2017", "validation")
        got = _examples(source)
    assert source.dataset.element_spec == contract.EXAMPLE_SPEC and 0 < len(got) <= 4
    for ex in got:
        n = len(ex["labels"])
        assert n > 0 and ex["boxes"].shape == (n, 4) and ex["difficult"].shape == (n,)
        assert np.all(ex["boxes"][:, 2] >= ex["boxes"][:, 0]) and np.all(ex["boxes"][:, 3] >= ex["boxes"][:, 1])
        assert np.all((ex["labels"] >= 0) & (ex["labels"] < 80)) and not ex["difficult"].any()
        assert ex["image_id"].decode().lstrip("-").isdigit()
        np.testing.assert_array_equal(ex["original_size"], ex["image"].shape[:2])


def _coco_example(image_id, image, bbox, labels, crowd):
    n = len(labels)
    return {"image": image, "image/filename": f"{image_id:012d}.jpg", "image/id": np.int64(image_id),
            "objects": {"id": np.arange(n, dtype=np.int64), "area": np.ones(n, np.int64),
                        "bbox": np.array(bbox, np.float32).reshape(n, 4), "label": np.array(labels, np.int64),
                        "is_crowd": np.array(crowd, bool)}}


def test_tfds_boxes_crowd_and_empty_images(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    # tfds stores COCO boxes as (y/H, x/W, (y+h)/H, (x+w)/W); the second box has swapped corners.
    with_objects = _coco_example(7, image, [[2.25 / 40, 1.5 / 60, 12.75 / 40, 21.5 / 60],
                                            [1.0, 1.0, 0.0, 0.0]], [79, 0], [False, True])
    without_objects = _coco_example(8, image, [], [], [])
    examples = [with_objects, without_objects]

    def as_dataset(self, *args, **kwargs):
        spec = tf.nest.map_structure(lambda v: tf.TensorSpec(
            [None] * np.ndim(v), tf.string if isinstance(v, str) else tf.as_dtype(np.asarray(v).dtype)),
            with_objects)
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
        kept = _examples(coco.tfds_coco("coco/2017", "test", crowd="difficult"))
    (got,) = kept  # the image without annotations is filtered out, as the reference does
    fake = write_coco(tmp_path, images=IMAGES[:1])
    (local,) = _examples(coco.local_coco(fake.root, crowd="difficult"))
    np.testing.assert_allclose(got["boxes"], local["boxes"], atol=1e-6)
    np.testing.assert_allclose(got["boxes"][1], [0, 0, 1, 1], atol=1e-7)
    for key in ("labels", "difficult", "original_size", "image_id"):
        np.testing.assert_array_equal(got[key], local[key])


def test_tfds_not_prepared_raises_without_downloading(tmp_path):
    assert_unprepared_tfds_refused(functools.partial(coco.tfds_coco, "coco/2017", "validation"), tmp_path,
                                   coco.COCO_ZIP_FILES, present=(), missing="train2017.zip")


def test_validate_none_uses_json_sizes_and_still_checks_existence(tmp_path):
    fake = write_coco(tmp_path, images=IMAGES)
    fast = _examples(coco.local_coco(fake.root, validate="none"))
    checked = _examples(coco.local_coco(fake.root))
    for x, y in zip(fast, checked, strict=True):
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
    (fake.image_dir / IMAGES[1].name).unlink()
    with pytest.raises(contract.MissingFileError, match=IMAGES[1].name):
        coco.local_coco(fake.root, validate="none")


# ------------------------------------------------------------------------------------------------ own data


def test_background_only_images_are_kept_on_request(tmp_path):
    fake = write_coco(tmp_path, images=IMAGES, unannotated_images=2)
    assert coco.local_coco(fake.root).num_examples == 2  # the reference's selection
    source = coco.local_coco(fake.root, background_images="keep")
    got = _examples(source)
    assert source.num_examples == len(got) == 4
    assert [g["image_id"] for g in got][:2] == [b"7", b"3"]
    for empty in got[2:]:
        assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_class_names_select_and_order_the_categories(tmp_path):
    """Your own list: labels follow config.data.class_names, by category name, whatever the ids."""
    images = [FakeCocoImage(1, annotations=[FakeAnnotation(7, (1, 1, 9, 9)), FakeAnnotation(4, (2, 2, 5, 5))])]
    fake = write_coco(tmp_path, images=images, categories=[(4, "Tree"), (7, "bush"), (9, "rock")])
    source = coco.local_coco(fake.root, class_names=("bush", "tree"))
    assert source.class_names == ("bush", "tree") and source.category_ids == (7, 4)
    (got,) = _examples(source)
    np.testing.assert_array_equal(got["labels"], [0, 1])
    every = coco.local_coco(fake.root)  # no list: every category, sorted by id
    assert every.class_names == ("Tree", "bush", "rock")
    with pytest.raises(contract.BadExampleError, match="config.data.class_names"):
        coco.local_coco(fake.root, class_names=("tree",))  # the bush annotation is not a class read
    with pytest.raises(ValueError, match=r"config.data.class_names lists \['cactus'\]"):
        coco.local_coco(fake.root, class_names=("tree", "cactus"))


def test_more_categories_than_the_model_has_classes_is_refused_naming_both_numbers():
    source = contract.DetectionSource(dataset=None, name="COCO val2017 (local x)",
                                      class_names=tuple(f"c{i}" for i in range(100)))
    with pytest.raises(ValueError, match=r"has 100 classes but .* num_classes=81 .*config.model.num_classes=101"):
        contract.check_labels_fit(source, 81, None, "the model")
    with pytest.raises(ValueError, match="config.data.class_names"):
        contract.check_labels_fit(source, 101, ("a",) * 100, "the model")
    contract.check_labels_fit(source, 201, None, "the model")  # the reference's 201 holds 100 classes

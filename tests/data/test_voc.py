"""Tests for robustdet_tf.data.voc: local VOC trees, tfds voc/2007 (mocked, offline) and bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import functools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from robustdet_tf.data import contract, validation, voc  # noqa: E402
from tests.data.fake_datasets import FakeObject, FakeVocImage, assert_unprepared_tfds_refused, write_voc_tree  # noqa: E402

SPEC_ORDER = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
              "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
              "tvmonitor"]


def _examples(source):
    return [{k: v.numpy() for k, v in ex.items()} for ex in source.dataset]


def _ref_box(box, height, width):
    """The reference's annotation transform: (XML - 1) / size."""
    xmin, ymin, xmax, ymax = box
    return [(xmin - 1) / width, (ymin - 1) / height, (xmax - 1) / width, (ymax - 1) / height]


def test_class_names_follow_spec_order():
    assert list(voc.VOC_CLASSES) == SPEC_ORDER


def test_local_voc_reads_boxes_labels_and_difficult_exactly(tmp_path):
    images = [
        FakeVocImage("img_a", 40, 60, [FakeObject("dog", (1, 1, 60, 40)),
                                       FakeObject(" Person ", (11, 6, 30, 25), difficult=True)]),
        FakeVocImage("img_b", 30, 50, [FakeObject("tvmonitor", (5, 7, 45, 22))]),
    ]
    tree = write_voc_tree(tmp_path, "2007", "test", images=images)
    source = voc.local_voc(tree.root, "2007", "test")
    assert source.num_examples == 2 and source.skipped == {} and source.class_names == voc.VOC_CLASSES
    assert source.dataset.element_spec == contract.EXAMPLE_SPEC
    got = _examples(source)
    assert [g["image_id"] for g in got] == [b"img_a", b"img_b"]  # split-file order
    a, b = got
    np.testing.assert_allclose(a["boxes"], [_ref_box((1, 1, 60, 40), 40, 60), _ref_box((11, 6, 30, 25), 40, 60)],
                               atol=1e-7)
    np.testing.assert_array_equal(a["labels"], [11, 14])  # dog, person (name lower-cased and stripped)
    np.testing.assert_array_equal(a["difficult"], [False, True])
    np.testing.assert_array_equal(a["original_size"], [40, 60])
    assert a["image"].shape == (40, 60, 3) and a["image"].dtype == np.uint8
    np.testing.assert_allclose(b["boxes"], [_ref_box((5, 7, 45, 22), 30, 50)], atol=1e-7)
    np.testing.assert_array_equal(b["labels"], [19])
    np.testing.assert_array_equal(b["original_size"], [30, 50])
    # The fake JPEG fills each box with a colour: the person box centre is bright, the corner is background.
    assert a["image"][15, 20].mean() > 35 and b["image"][29, 49].mean() < 35


def test_root_may_be_devkit_or_its_parent(tmp_path):
    tree = write_voc_tree(tmp_path)
    via_devkit = _examples(voc.local_voc(tree.root, "2007", "trainval"))
    via_parent = _examples(voc.local_voc(tmp_path, "2007", "trainval"))
    assert len(via_devkit) == 3
    for x, y in zip(via_devkit, via_parent, strict=True):
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
        assert x["image_id"] == y["image_id"]


def test_xml_without_size_uses_the_decoded_image_size(tmp_path):
    images = [FakeVocImage("nosize", 32, 80, [FakeObject("cat", (9, 5, 41, 29))], write_size=False),
              FakeVocImage("wrongsize", 32, 80, [FakeObject("cat", (9, 5, 41, 29))], xml_size=(100, 100))]
    tree = write_voc_tree(tmp_path, images=images)
    for ex in _examples(voc.local_voc(tree.root)):
        np.testing.assert_allclose(ex["boxes"], [_ref_box((9, 5, 41, 29), 32, 80)], atol=1e-7)
        np.testing.assert_array_equal(ex["original_size"], [32, 80])


def test_validate_none_trusts_xml_size_and_the_pipeline_catches_a_wrong_one(tmp_path):
    images = [FakeVocImage("wrongsize", 32, 80, [FakeObject("cat", (9, 5, 41, 29))], xml_size=(100, 100))]
    tree = write_voc_tree(tmp_path, images=images)
    source = voc.local_voc(tree.root, validate="none")
    with pytest.raises(tf.errors.InvalidArgumentError, match="wrongsize.jpg"):
        _examples(source)


def test_custom_class_names(tmp_path):
    images = [FakeVocImage("c1", objects=[FakeObject("Widget", (2, 2, 20, 20)), FakeObject("gadget", (3, 3, 9, 9))])]
    tree = write_voc_tree(tmp_path, images=images)
    source = voc.local_voc(tree.root, class_names=("gadget", "widget"))
    assert source.class_names == ("gadget", "widget")
    np.testing.assert_array_equal(_examples(source)[0]["labels"], [1, 0])


def test_voc_dataset_concatenates_years_in_order(tmp_path):
    write_voc_tree(tmp_path, "2007", "trainval", num_images=2, seed=0)
    write_voc_tree(tmp_path, "2012", "trainval", num_images=3, seed=1)
    source = voc.voc_dataset("2007+2012", "trainval", root=tmp_path)
    ids = [ex["image_id"].decode() for ex in _examples(source)]
    assert source.num_examples == 5 and len(ids) == 5
    assert ids[:2] == ["000000", "000001"] and all(i.startswith("01") for i in ids[2:])
    assert voc.voc_dataset("clean", "trainval", root=tmp_path).num_examples == 2  # bare name = VOC2007


def test_parse_voc_spec():
    assert voc.parse_voc_spec("2007+2012") == ["2007", "2012"]
    assert voc.parse_voc_spec("clean[2007]+clean[2012]") == ["2007", "2012"]
    assert voc.parse_voc_spec("clean") == ["2007"]
    with pytest.raises(ValueError, match="2007\\+2012"):
        voc.parse_voc_spec("voc07")


# ----------------------------------------------------------------------------------------------- bad input


def test_missing_root_names_the_folder_and_the_archive(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(contract.DatasetNotFoundError) as info:
        voc.local_voc(missing, "2007", "trainval")
    assert str(missing) in str(info.value) and "VOCtrainval_06-Nov-2007.tar" in str(info.value)
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(FileNotFoundError, match="VOC2007"):
        voc.local_voc(tmp_path / "empty", "2007")


def test_missing_split_file_names_the_path_and_the_test_archive(tmp_path):
    tree = write_voc_tree(tmp_path, split="trainval")
    with pytest.raises(contract.DatasetNotFoundError) as info:
        voc.local_voc(tree.root, "2007", "test")
    message = str(info.value)
    assert os.path.join("ImageSets", "Main", "test.txt") in message and "VOCtest_06-Nov-2007.tar" in message


GOOD = FakeObject("car", (4, 4, 30, 20))

BAD_CASES = {
    # name: (bad image, exception type, reason, whether the bad image survives with its good object)
    "truncated_jpeg": (FakeVocImage("bad", objects=[GOOD], image="truncated"), contract.BadExampleError,
                       validation.CORRUPT_IMAGE, False),
    "not_a_jpeg": (FakeVocImage("bad", objects=[GOOD], image="garbage"), contract.BadExampleError,
                   validation.CORRUPT_IMAGE, False),
    "missing_jpeg": (FakeVocImage("bad", objects=[GOOD], image="missing"), contract.MissingFileError,
                     validation.MISSING_IMAGE, False),
    "box_outside": (FakeVocImage("bad", objects=[GOOD, FakeObject("car", (10, 10, 90, 20))]),
                    contract.BadExampleError, validation.BOX_OUTSIDE_IMAGE, True),
    "zero_area_box": (FakeVocImage("bad", objects=[GOOD, FakeObject("car", (10, 10, 10, 20))]),
                      contract.BadExampleError, validation.DEGENERATE_BOX, True),
    "unknown_class": (FakeVocImage("bad", objects=[GOOD, FakeObject("unicorn", (2, 2, 8, 8))]),
                      contract.BadExampleError, validation.UNKNOWN_CLASS, True),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_clearly_or_is_skipped_and_counted(tmp_path, case):
    bad_image, error_type, reason, survives = BAD_CASES[case]
    good = FakeVocImage("good", objects=[GOOD])
    tree = write_voc_tree(tmp_path, images=[good, bad_image])
    with pytest.raises(error_type) as info:
        voc.local_voc(tree.root)
    assert info.value.reason == reason
    assert "bad." in str(info.value) and "skip_bad=True" in str(info.value)  # names the file and the way out
    source = voc.local_voc(tree.root, skip_bad=True)
    assert source.skipped == {reason: 1}
    assert len(source.problems) == 1 and "bad." in source.problems[0].path
    got = _examples(source)
    assert [g["image_id"] for g in got] == ([b"good", b"bad"] if survives else [b"good"])
    for g in got:  # whatever survives holds only the good object
        np.testing.assert_allclose(g["boxes"], [_ref_box(GOOD.box, 48, 64)], atol=1e-7)


def test_missing_and_malformed_xml(tmp_path):
    tree = write_voc_tree(tmp_path, images=[FakeVocImage("good", objects=[GOOD]),
                                            FakeVocImage("noxml", objects=[GOOD]),
                                            FakeVocImage("broken", objects=[GOOD])])
    voc_dir = tree.root / "VOC2007" / "Annotations"
    (voc_dir / "noxml.xml").unlink()
    (voc_dir / "broken.xml").write_text("<annotation><object><name>car</name>")
    with pytest.raises(contract.MissingFileError, match="noxml.xml"):
        voc.local_voc(tree.root)
    source = voc.local_voc(tree.root, skip_bad=True)
    assert source.skipped == {validation.MISSING_ANNOTATION: 1, validation.BAD_ANNOTATION: 1}
    assert source.num_examples == 1


def test_truncated_jpeg_found_by_full_validation_and_missed_by_none(tmp_path):
    tree = write_voc_tree(tmp_path, images=[FakeVocImage("good", objects=[GOOD]),
                                            FakeVocImage("bad", objects=[GOOD], image="truncated")])
    assert voc.local_voc(tree.root, skip_bad=True, validate="full").skipped == {validation.CORRUPT_IMAGE: 1}
    unchecked = voc.local_voc(tree.root, validate="none")  # the documented trade-off: fails when decoded
    assert unchecked.num_examples == 2
    with pytest.raises(tf.errors.InvalidArgumentError):
        _examples(unchecked)
    with pytest.raises(ValueError, match="validate"):
        voc.local_voc(tree.root, validate="sometimes")


def test_all_images_bad_raises_even_with_skip_bad(tmp_path):
    tree = write_voc_tree(tmp_path, images=[FakeVocImage("bad", objects=[FakeObject("car", (10, 10, 10, 20))])])
    with pytest.raises(contract.BadExampleError, match="no usable image"):
        voc.local_voc(tree.root, skip_bad=True)


def test_an_image_whose_objects_were_all_bad_is_skipped_not_kept_as_background(tmp_path):
    bad = FakeVocImage("bad", objects=[FakeObject("car", (10, 10, 10, 20))])
    tree = write_voc_tree(tmp_path, images=[FakeVocImage("good", objects=[GOOD]), bad])
    source = voc.local_voc(tree.root, skip_bad=True)
    assert source.skipped == {validation.DEGENERATE_BOX: 1, validation.NO_OBJECTS: 1}
    assert [g["image_id"] for g in _examples(source)] == [b"good"]


def test_background_only_images_are_valid_examples(tmp_path):
    tree = write_voc_tree(tmp_path, images=[FakeVocImage("good", objects=[GOOD]), FakeVocImage("empty", objects=[])])
    got = _examples(voc.local_voc(tree.root))
    assert [g["image_id"] for g in got] == [b"good", b"empty"]
    assert got[1]["boxes"].shape == (0, 4) and got[1]["labels"].shape == (0,) and got[1]["difficult"].shape == (0,)
    assert got[1]["image"].shape == (48, 64, 3)
    dropped = voc.local_voc(tree.root, background_images="drop")
    assert [g["image_id"] for g in _examples(dropped)] == [b"good"]
    with pytest.raises(ValueError, match="config.data.background_images"):
        voc.local_voc(tree.root, background_images="sometimes")


def test_a_voc_format_folder_of_any_name_with_png_images(tmp_path):
    """Your own data: the folder holding Annotations/ImageSets/JPEGImages may have any name, be given as the root
    itself or by name as ``year``, and hold PNG files."""
    images = [FakeVocImage("a1", objects=[FakeObject("Tree", (4, 4, 30, 20))])]
    tree = write_voc_tree(tmp_path / "devkit", images=images)
    own = tmp_path / "aerial_trees"
    (tree.root / "VOC2007").rename(own)
    jpg = own / "JPEGImages" / "a1.jpg"
    png = own / "JPEGImages" / "a1.png"
    tf.keras.utils.save_img(str(png), tf.io.decode_jpeg(jpg.read_bytes()).numpy(), scale=False)
    jpg.unlink()
    for root, year in ((own, "2007"), (tmp_path, "aerial_trees")):
        source = voc.local_voc(root, year, class_names=("tree",))
        (got,) = _examples(source)
        assert source.class_names == ("tree",)
        np.testing.assert_array_equal(got["labels"], [0])
        np.testing.assert_allclose(got["boxes"], [_ref_box((4, 4, 30, 20), 48, 64)], atol=1e-7)
    with pytest.raises(contract.DatasetNotFoundError, match="No VOC-format folder"):
        voc.local_voc(tmp_path, "elsewhere")


def test_unknown_class_error_names_the_config_key(tmp_path):
    tree = write_voc_tree(tmp_path, images=[FakeVocImage("a", objects=[FakeObject("Tree", (4, 4, 30, 20))])])
    with pytest.raises(contract.BadExampleError, match="config.data.class_names") as info:
        voc.local_voc(tree.root)
    assert "'tree'" in str(info.value)


# ----------------------------------------------------------------------------------------------------- tfds


def test_tfds_mock_data_follows_the_contract():
    """Offline: tfds has no metadata for voc/2007 here, so mock_data generates from the builder's code."""
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        source = voc.tfds_voc("voc/2007", "test")
        trainval = voc.voc_dataset("2007", "trainval", source="tfds")
        got = _examples(source)
        assert len(_examples(trainval)) == 3
    assert source.dataset.element_spec == contract.EXAMPLE_SPEC and len(got) == 3
    for ex in got:
        n = len(ex["labels"])
        assert ex["boxes"].shape == (n, 4) and ex["difficult"].shape == (n,)
        assert np.all(ex["boxes"][:, 2] >= ex["boxes"][:, 0]) and np.all(ex["boxes"][:, 3] >= ex["boxes"][:, 1])
        assert np.all((ex["labels"] >= 0) & (ex["labels"] < 20))
        np.testing.assert_array_equal(ex["original_size"], ex["image"].shape[:2])


def _voc_example(filename, image, bbox, labels, difficult):
    n = len(labels)
    return {
        "image": image, "image/filename": filename,
        "objects": {"bbox": np.array(bbox, np.float32), "label": np.array(labels, np.int64),
                    "pose": np.zeros(n, np.int64), "is_truncated": np.zeros(n, bool),
                    "is_difficult": np.array(difficult, bool)},
        "labels": np.array(sorted(set(labels)), np.int64), "labels_no_difficult": np.array([], np.int64),
    }


def test_tfds_boxes_match_the_local_reader_exactly(tmp_path):
    """tfds stores XML/size; the reader must give the reference's (XML - 1)/size like the local reader."""
    height, width = 10, 20
    xml_boxes = [(3, 2, 12, 9), (5, 1, 20, 10)]
    tfds_boxes = [[2 / 10, 3 / 20, 9 / 10, 12 / 20],
                  [10 / 10, 20 / 20, 1 / 10, 5 / 20]]  # second one with swapped corners, as mock data has
    image = np.zeros((height, width, 3), np.uint8)

    def as_dataset(self, *args, **kwargs):
        ex = _voc_example("000042.jpg", image, tfds_boxes, [6, 14], [False, True])
        return tf.data.Dataset.from_generator(
            lambda: iter([ex]), output_signature=tf.nest.map_structure(
                lambda v: tf.TensorSpec(np.shape(v), tf.as_dtype(np.asarray(v).dtype) if not isinstance(v, str)
                                        else tf.string), ex))

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
        (got,) = _examples(voc.tfds_voc("voc/2007", "test"))
    images = [FakeVocImage("000042", height, width, [FakeObject("car", xml_boxes[0]),
                                                      FakeObject("person", xml_boxes[1], difficult=True)])]
    (local,) = _examples(voc.local_voc(write_voc_tree(tmp_path, images=images).root))
    expected = [_ref_box(b, height, width) for b in xml_boxes]
    np.testing.assert_allclose(got["boxes"], expected, atol=1e-6)
    np.testing.assert_allclose(local["boxes"], expected, atol=1e-7)
    for key in ("labels", "difficult", "original_size", "image_id"):
        np.testing.assert_array_equal(got[key], local[key])


def test_tfds_not_prepared_raises_without_downloading(tmp_path):
    archives = ("VOCtest_06-Nov-2007.tar", "VOCtrainval_06-Nov-2007.tar")
    assert_unprepared_tfds_refused(functools.partial(voc.tfds_voc, "voc/2007", "test"), tmp_path, archives,
                                   present=archives[:1], missing=archives[1])


def test_tfds_voc2012_test_is_refused():
    with pytest.raises(ValueError, match="VOC2007 test"):
        voc.tfds_voc("voc/2012", "test")


def test_a_folder_that_two_years_resolve_to_is_read_once(tmp_path, caplog):
    """Your own data with the paper's selection: ``root`` is the dataset folder itself, so ``2007`` and ``2012``
    both resolve to it.  Each image counts once, and the warning names the folder and the keys to change."""
    tree = write_voc_tree(tmp_path / "devkit", "2007", "trainval", num_images=3, seed=0)
    own = tmp_path / "tiles"
    (tree.root / "VOC2007").rename(own)
    with caplog.at_level("WARNING", logger=voc.__name__):
        source = voc.voc_dataset("2007+2012", "trainval", root=own)
    ids = [ex["image_id"].decode() for ex in _examples(source)]
    assert source.num_examples == 3 and sorted(ids) == sorted(set(ids)) and len(ids) == 3
    (warning,) = [r.getMessage() for r in caplog.records if "read once" in r.getMessage()]
    assert str(own) in warning and "config.data.train_years" in warning and "'2007' and '2012'" in warning
    # Two real years stay two sources, and a year named twice is read once.
    write_voc_tree(tmp_path, "2007", "trainval", num_images=2, seed=0)
    write_voc_tree(tmp_path, "2012", "trainval", num_images=3, seed=1)
    assert voc.voc_dataset("2007+2012", "trainval", root=tmp_path).num_examples == 5
    assert voc.voc_dataset("2007+2007", "trainval", root=tmp_path).num_examples == 2

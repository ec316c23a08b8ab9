"""SavedModel export (OD-API ``serving_default`` + ``raw``) and its atomic writes."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from robustdet_tf.export import saved_model as sm  # noqa: E402
from tests.export.tiny_models import tiny_robustdet, tiny_ssd  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def ssd():
    return tiny_ssd()


def _uint8_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _assert_detections_equal(got, want):
    assert set(got) == set(sm.DETECTION_OUTPUTS)
    np.testing.assert_array_equal(got["num_detections"].numpy(), want["num_detections"].numpy())
    np.testing.assert_array_equal(got["detection_classes"].numpy(), want["detection_classes"].numpy())
    for key in ("detection_boxes", "detection_scores"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), err_msg=key, **TOL)


def _check_export(model, path):
    """serving_default and raw of the loaded SavedModel against the Keras model on the same images."""
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "raw"}
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]

    images = _uint8_images((2, 64, 64, 3))  # at the model size the inner resize is the identity
    got = serve(images=tf.constant(images))
    assert got["detection_boxes"].shape == (2, sm.DEFAULT_MAX_DETECTIONS, 4)
    _assert_detections_equal(got, model.detect(images.astype(np.float32), max_detections=100))

    other = _uint8_images((2, 80, 96, 3), seed=1)  # any size: resized inside, bilinear without antialiasing
    resized = tf.image.resize(other.astype(np.float32), [64, 64], method="bilinear", antialias=False)
    _assert_detections_equal(serve(images=tf.constant(other)), model.detect(resized, max_detections=100))

    for empty in ((0, 64, 64, 3), (1, 0, 64, 3)):  # a batch of no image, an image of no pixels
        with pytest.raises(tf.errors.InvalidArgumentError, match="serving_default takes a batch of at least one"):
            serve(images=tf.constant(np.zeros(empty, np.uint8)))

    pixels = images.astype(np.float32)
    raw = loaded.signatures["raw"](images=tf.constant(pixels))
    want = model(pixels, training=False)
    expected = {"loc", "logits", "pi"} if hasattr(model, "aid") else {"loc", "logits"}
    assert set(raw) == expected
    for key in expected:
        np.testing.assert_allclose(raw[key].numpy(), want[key].numpy(), err_msg=key, **TOL)
    return want


def test_ssd_saved_model_matches_keras(ssd, tmp_path):
    path = tmp_path / "ssd"
    assert sm.export_saved_model(ssd, path) == str(path)
    _check_export(ssd, str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ssd"]  # no temporary directory left behind


@pytest.mark.slow
def test_robustdet_star_saved_model_matches_keras(ssd, tmp_path):
    """RobustDet* (CFR) exercises everything RobustDet has plus the probabilistic conv4_3 (μ at inference); the
    non-CFR RobustDet goes through the same export code and is compared in test_tflite.py."""
    model = tiny_robustdet(ssd, cfr=True)
    sm.export_saved_model(model, tmp_path / "robust")
    want = _check_export(model, str(tmp_path / "robust"))
    assert 0.05 < want["pi"].numpy().max() < 0.99  # a real mixture went through the exported AID
    assert np.abs(want["pi"].numpy()[0] - want["pi"].numpy()[1]).max() > 1e-4


def test_existing_exports_are_refused_replaced_only_on_request_and_failures_leave_nothing(
    ssd, tmp_path, monkeypatch
):
    path = tmp_path / "export"
    path.mkdir()
    (path / "marker").write_text("previous export")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sm.export_saved_model(ssd, path)
    assert (path / "marker").read_text() == "previous export"

    sm.export_saved_model(ssd, path, overwrite=True)
    assert not (path / "marker").exists() and (path / "saved_model.pb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]

    class FailingArchive:  # a crash half-way through writing
        def track(self, model):
            pass

        def add_endpoint(self, *args, **kwargs):
            pass

        def write_out(self, directory, verbose=False):
            with open(os.path.join(directory, "saved_model.pb"), "w") as f:
                f.write("partial")
            raise OSError("disk full")

    monkeypatch.setattr(keras.export, "ExportArchive", FailingArchive)
    with pytest.raises(OSError, match="disk full"):
        sm.export_saved_model(ssd, tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        sm.export_saved_model(ssd, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing new, no temporaries
    assert (path / "saved_model.pb").stat().st_size > len("partial")  # the previous export survived
    with pytest.raises(ValueError, match="max_detections"):
        sm.export_saved_model(ssd, tmp_path / "zero", max_detections=0)


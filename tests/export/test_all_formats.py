"""``export_all`` (``main.py --mode=export``): every deployment format of a model into one folder, checked before
anything is written, and the ``.keras`` archive through ``export_keras``."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.export import FORMATS, export_all, tflite
from robustdet_tf.export.all_formats import export_keras, export_paths
from tests.export.tiny_models import tiny_ssd
from tests.helpers import assert_same_model

EVERY_FILE = ["model.keras", "model_dynamic_range.json", "model_dynamic_range.tflite", "model_float32.json",
              "model_float32.tflite", "saved_model"]


@pytest.fixture(scope="module")
def ssd():
    return tiny_ssd()


def images():
    return np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)


def test_export_paths_are_fixed_names_in_the_folder(tmp_path):
    paths = export_paths(tmp_path / "out")
    assert paths == {name: str(tmp_path / "out" / file) for name, file in [
        ("saved_model", "saved_model"), ("keras", "model.keras"), ("tflite_float32", "model_float32.tflite"),
        ("tflite_dynamic_range", "model_dynamic_range.tflite")]}
    assert export_paths("relative")["keras"] == os.path.join(os.getcwd(), "relative", "model.keras")


def test_export_keras_writes_a_loadable_archive_and_refuses_to_replace_one(ssd, tmp_path):
    path = tmp_path / "m.keras"
    assert export_keras(ssd, path) == str(path)
    assert_same_model(ssd, keras.saving.load_model(path), images(), atol=0.0, call_kwargs={"training": False})
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_keras(ssd, path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.keras"]
    export_keras(ssd, path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]  # replaced in place, no temporary left


def test_a_subset_of_formats_writes_only_those(ssd, tmp_path):
    paths = export_all(ssd, tmp_path / "out", formats=("keras",))
    assert set(paths) == {"keras"} and sorted(os.listdir(tmp_path / "out")) == ["model.keras"]


def test_export_all_writes_every_format_and_the_keras_file_round_trips(ssd, tmp_path):
    out = tmp_path / "exports"
    paths = export_all(ssd, out)
    assert FORMATS == ("saved_model", "tflite", "keras")
    assert set(paths) == {"saved_model", "tflite_float32", "tflite_dynamic_range", "keras"}
    assert sorted(p.name for p in out.iterdir()) == EVERY_FILE
    assert paths == {name: path for name, path in export_paths(out).items()}

    x = images()
    assert_same_model(ssd, keras.saving.load_model(paths["keras"]), x, atol=0.0, call_kwargs={"training": False})
    raw = tf.saved_model.load(paths["saved_model"]).signatures["raw"](images=tf.constant(x))
    np.testing.assert_allclose(raw["logits"].numpy(), ssd(x, training=False)["logits"].numpy(), rtol=1e-5,
                               atol=1e-4)
    interpreter = tflite.make_interpreter(paths["tflite_float32"])
    assert interpreter.get_input_details()[0]["shape"].tolist()[1:] == [64, 64, 3]

    before = {name: os.path.getmtime(out / name) for name in EVERY_FILE}
    with pytest.raises(FileExistsError):
        export_all(ssd, out, formats=("keras",))
    assert {name: os.path.getmtime(out / name) for name in EVERY_FILE} == before


def test_refusals_leave_nothing_behind(ssd, tmp_path):
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \['onnx'\]; choose from \['saved_model', "):
        export_all(ssd, tmp_path / "other", formats=("onnx", "keras"))
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \[\]"):
        export_all(ssd, tmp_path / "other", formats=())
    with pytest.raises(TypeError, match="SSD or RobustDet"):
        export_all(keras.Sequential([keras.layers.Dense(1)]), tmp_path / "other")
    (tmp_path / "partly").mkdir()
    (tmp_path / "partly" / "model_float32.json").write_text("{}")  # one destination of many is taken
    with pytest.raises(FileExistsError):
        export_all(ssd, tmp_path / "partly")
    assert sorted(os.listdir(tmp_path / "partly")) == ["model_float32.json"]  # checked before writing anything
    assert sorted(os.listdir(tmp_path)) == ["partly"]


def test_an_export_killed_half_way_is_completed_in_place_for_its_model_and_refused_for_another(ssd, tmp_path,
                                                                                                monkeypatch):
    from robustdet_tf.export import all_formats
    from robustdet_tf.io import DestinationExistsError

    out = tmp_path / "exports"
    real = all_formats.export_tflite

    def killed_after_float32(model, path, quantization, overwrite):
        if quantization != "float32":
            os.makedirs(out / ".model_dynamic_range.tflite.ab12cd34.tmp")  # what the killed write left
            raise KeyboardInterrupt
        return real(model, path, quantization=quantization, overwrite=overwrite)

    with monkeypatch.context() as patch:
        patch.setattr(all_formats, "export_tflite", killed_after_float32)
        with pytest.raises(KeyboardInterrupt):
            export_all(ssd, out)
    (out / "model_float32.json").unlink()  # and a pair cut in half
    assert (out / "saved_model").is_dir() and (out / all_formats.UNFINISHED).exists()
    saved = os.path.getmtime(out / "saved_model")
    with pytest.raises(DestinationExistsError, match="unfinished export of another model"):
        export_all(tiny_ssd(seed=1), out)  # another draw of the weights
    paths = export_all(ssd, out)
    assert sorted(p.name for p in out.iterdir()) == EVERY_FILE  # complete, marker and leftovers gone
    assert os.path.getmtime(out / "saved_model") == saved  # the whole artifact was kept
    assert paths == export_paths(out)
    interpreter = tflite.make_interpreter(paths["tflite_dynamic_range"])
    assert interpreter.get_input_details()[0]["shape"].tolist()[1:] == [64, 64, 3]

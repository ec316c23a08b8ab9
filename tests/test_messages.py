"""Messages that point the right way (issue 25, item 8): each names the thing and the fix, and nothing is written."""

import os
import subprocess
import sys

import pytest

from robustdet_tf import cli
from robustdet_tf.io import new_output_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_output_dir_that_is_a_file_is_named_as_a_file(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    with pytest.raises(FileExistsError, match=r"results\.txt is a file, not a folder; name a new or empty folder"):
        new_output_dir(target, explicit=True)
    assert target.read_text() == "mine"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "robustness.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds results"):
        new_output_dir(tmp_path / "full", explicit=True)


def test_a_second_export_names_the_command_line_flag_not_a_python_argument(tmp_path, monkeypatch):
    from robustdet_tf.io import check_destination

    existing = tmp_path / "saved_model"
    existing.mkdir()
    monkeypatch.setattr(cli, "load_trained_model", lambda workdir, config: object())
    monkeypatch.setattr(cli, "export_all", lambda model, out: check_destination(existing, overwrite=False))
    with pytest.raises(FileExistsError) as caught:
        cli.run_export(None, str(tmp_path), str(tmp_path), printer=lambda *_: None)
    message = str(caught.value)
    assert f"{existing} already holds an export" in message and "--export_dir=<a new folder>" in message
    assert "overwrite=True" not in message


def test_a_workdir_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    proc = subprocess.run([sys.executable, "main.py", "--mode=train", f"--workdir={target}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--workdir={target} is a file, not a folder" in proc.stderr and target.read_text() == "mine"


def test_the_shapes_set_on_a_voc_config_is_refused_with_the_missing_keys_before_any_write(tmp_path):
    from configs import ssd300_voc
    from robustdet_tf import train as train_lib
    from robustdet_tf.workdir import MODEL_RECORD

    config = ssd300_voc.get_config()
    with config.unlocked():
        config.data.dataset = "shapes"
        config.train.steps = 1
        config.model.width = 0.125
    trainer = train_lib.Trainer(config, str(tmp_path))
    with pytest.raises(ValueError, match=r"dataset='shapes' needs the synthetic set's keys.*data\.train_images.*"
                                         r"configs/demo\.py"):
        trainer.run(printer=lambda *_: None)
    assert not (tmp_path / MODEL_RECORD).exists()


def test_model_steps_none_as_the_readme_documents_it_uses_the_feature_map_sizes():
    from robustdet_tf.priors import PriorSpec

    kwargs = dict(min_sizes=(30, 60), max_sizes=(60, 111), aspect_ratios=((2,), (2, 3)), image_size=300,
                  feature_maps=(38, 19))
    assert PriorSpec(steps=(None,), **kwargs).steps is None  # what --config.model.steps=None gives a tuple field
    assert PriorSpec(steps=None, **kwargs) == PriorSpec(steps=(None,), **kwargs)
    with pytest.raises(ValueError, match=r"model\.steps \(8, None\) mixes numbers and None"):
        PriorSpec(steps=(8, None), **kwargs)


def test_an_image_far_larger_than_the_model_input_is_named_with_its_size(caplog):
    import numpy as np

    from robustdet_tf.data.contract import ParsedImage
    from robustdet_tf.data.validation import ProblemLog, finished_source_fields

    def image(name, height, width):
        return ParsedImage(path=f"/data/JPEGImages/{name}.jpg", image_id=name, height=height, width=width,
                           boxes=np.array([[0.1, 0.1, 0.5, 0.5]], np.float32), labels=np.array([0], np.int32),
                           difficult=np.array([False]))

    images = [image("small", 375, 500), image("huge", 6000, 6000), image("also_small", 480, 640)]
    with caplog.at_level("WARNING"):
        fields = finished_source_fields(images, ProblemLog(False), "VOC2007 test (local)", "/data", 20)
    assert fields["num_examples"] == 3  # a warning, not a refusal
    said = [r.getMessage() for r in caplog.records if "far larger than the model's input" in r.getMessage()]
    assert len(said) == 1 and "/data/JPEGImages/huge.jpg is 6000x6000 (36 MP)" in said[0]

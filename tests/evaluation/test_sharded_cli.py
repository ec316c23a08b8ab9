"""``--mode=evaluate`` (``cli.run_evaluate``) resumes an unfinished table in an explicit ``--output_dir``, refuses a
finished one, and asks several ``TF_CONFIG`` workers for one shared ``--output_dir``."""

import json

import pytest

from robustdet_tf import cli
from robustdet_tf.evaluation import robustness, sharded
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.evaluation.test_from_config import tiny_config
from tests.evaluation.test_sharded import Interrupt, counting_steps


@pytest.mark.slow
def test_cli_resumes_an_unfinished_table(tmp_path, monkeypatch):
    config = tiny_config()  # 5 images in batches of 2: 3 batches, clean + A_cls (PGD-1)
    config.eval.shard_batches = 1
    models = {"tiny": SSD(**{**TINY_SSD, "num_classes": config.model.num_classes}, max_detections=20)}
    quiet = lambda *_: None  # noqa: E731
    fresh = cli.run_evaluate(config, str(tmp_path), models=models, output_dir=str(tmp_path / "fresh"), printer=quiet)

    folder = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        counting_steps(patch, fail_after=4)  # clean: 3 batches; A_cls: shard 0, then interrupted
        with pytest.raises(Interrupt):
            cli.run_evaluate(config, str(tmp_path), models=models, output_dir=str(folder), printer=quiet)
    assert sharded.is_unfinished(folder)

    calls = counting_steps(monkeypatch)
    printed = []
    resumed = cli.run_evaluate(config, str(tmp_path), models=models, output_dir=str(folder), printer=printed.append)
    assert calls == {"attack": 2}
    assert printed[0] == f"resuming the unfinished evaluation in {folder}"
    cells = [line for line in printed if line.startswith("cell ")]  # evaluation/progress.py's lines
    assert len(cells) == 2 and cells[0].startswith("cell 1/2 (") and cells[1].endswith("all cells done")
    others = [line for line in printed[1:] if not line.startswith("cell ")]
    assert others[0] == "worker 0 of 1: computed 3 shards, reused 5 finished shards (2 cells)"
    assert others[1] == robustness.markdown_table(resumed)
    assert resumed == fresh == json.loads((folder / "robustness.json").read_text())

    with pytest.raises(FileExistsError, match="already holds results"):  # a finished table is never overwritten
        cli.run_evaluate(config, str(tmp_path), models=models, output_dir=str(folder), printer=quiet)

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="2 workers.*same --output_dir"):
        cli.run_evaluate(config, str(tmp_path), models=models, printer=quiet)


@pytest.mark.slow
def test_a_table_killed_while_writing_its_files_is_finished_in_place_by_the_same_command(tmp_path, monkeypatch):
    config = tiny_config()
    models = {"tiny": SSD(**{**TINY_SSD, "num_classes": config.model.num_classes}, max_detections=20)}
    quiet = lambda *_: None  # noqa: E731
    folder = tmp_path / "killed"
    real = robustness.write_text

    def killed_at_the_json(path, text):
        if path.endswith("robustness.json"):
            raise Interrupt("killed before robustness.json")
        real(path, text)

    with monkeypatch.context() as patch:
        patch.setattr(robustness, "write_text", killed_at_the_json)
        with pytest.raises(Interrupt):
            cli.run_evaluate(config, str(tmp_path), models=models, output_dir=str(folder), printer=quiet)
    assert (folder / "robustness.md").exists() and not (folder / "robustness.json").exists()
    assert sharded.is_unfinished(folder)  # the same command resumes it instead of refusing the folder
    calls = counting_steps(monkeypatch)
    finished = cli.run_evaluate(config, str(tmp_path), models=models, output_dir=str(folder), printer=quiet)
    assert calls == {}  # every cell came from its shards: nothing was attacked again
    assert finished == json.loads((folder / "robustness.json").read_text())
    assert (folder / "robustness.md").read_text() == robustness.markdown_table(finished)


def test_a_full_disk_during_an_evaluation_names_the_folder_and_the_resume(tmp_path, monkeypatch):
    import errno

    config = tiny_config()
    models = {"tiny": SSD(**{**TINY_SSD, "num_classes": config.model.num_classes}, max_detections=20)}

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(robustness, "write_text", full)
    folder = tmp_path / "table"
    with pytest.raises(OSError) as caught:
        cli.run_evaluate(config, str(tmp_path), models=models, output_dir=str(folder), printer=lambda *_: None)
    message = str(caught.value)
    assert f"no space left on the device of {folder}" in message and f"--output_dir={folder}" in message
    assert "the table resumes" in message and caught.value.errno == errno.ENOSPC


def test_eval_strategy_names(monkeypatch):
    from ml_collections import ConfigDict

    from robustdet_tf.evaluation.from_config import eval_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert eval_strategy(ConfigDict({"strategy": "auto"})) is None  # one CPU device: no replicas to split over
    with pytest.raises(ValueError, match=r"config.eval.strategy='tpu': use one of"):
        eval_strategy(ConfigDict({"strategy": "tpu"}))
    with pytest.raises(ValueError, match="TF_CONFIG environment variable, which is not set"):
        eval_strategy(ConfigDict({"strategy": "multi_worker"}))

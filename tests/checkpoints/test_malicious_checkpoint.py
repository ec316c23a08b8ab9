"""A ``.pth`` is a pickle: unpickling can run code.  Reading one must never run it (``weights_only=True``), and the
refusal must say what happened.  Needs torch (in requirements-dev.txt through requirements-torch.txt)."""

import os

import pytest

torch = pytest.importorskip("torch")

from ml_collections import ConfigDict  # noqa: E402

from robustdet_tf import cli  # noqa: E402
from robustdet_tf.importers.torch_import import read_state_dict  # noqa: E402


class _RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "vgg16_reducedfc.pth"
    payload = {"0.weight": torch.zeros(2), "0.bias": _RunsCode(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match=r"vgg16_reducedfc.pth is not a PyTorch checkpoint of tensors that can be "
                                         r"read safely .*never opened that way here") as caught:
        read_state_dict(str(path))
    assert "weights_only=False will likely succeed" not in str(caught.value)  # never advise the unsafe way
    assert not marker.exists()
    config = ConfigDict({"model": {"kind": "ssd", "num_classes": 3}, "train": {"steps": 1}})
    with pytest.raises(ValueError, match="weights_only"):
        cli.run_import(config, str(tmp_path / "run"), str(path), printer=lambda *_: None)
    assert not marker.exists() and not (tmp_path / "run" / "model.keras").exists()


def test_an_empty_or_foreign_file_is_named_with_what_to_give_instead(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.pth is empty \(0 bytes\): copy the .pth file again"):
        read_state_dict(str(empty))
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes.pth is not a PyTorch checkpoint .*Give the official") as caught:
        read_state_dict(str(notes))
    assert "()" not in str(caught.value).split("(", 1)[1][:3]  # the reason is never empty


def test_a_plain_state_dict_still_loads(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"0.weight": torch.ones(2, 3)}, path)
    assert read_state_dict(str(path))["0.weight"].shape == (2, 3)

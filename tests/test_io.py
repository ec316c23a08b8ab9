"""Atomic writes: readers never see a half-written file, a failure keeps the previous one, nothing is left behind."""

import os

import pytest

from robustdet_tf import io


def _entries(directory):
    return sorted(os.listdir(directory))


def test_destination_keeps_the_old_content_until_the_write_finishes(tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("v1")
    with io.atomic_output(target, overwrite=True) as tmp:
        with open(tmp, "w") as f:
            f.write("v2, half")
            f.flush()
            assert target.read_text() == "v1"  # written beside the destination, not into it
        assert os.path.dirname(tmp) != str(tmp_path) and os.path.basename(tmp) == "model.bin"
    assert target.read_text() == "v2, half"
    assert _entries(tmp_path) == ["model.bin"]


def test_an_error_while_writing_keeps_the_previous_file(tmp_path):
    target = tmp_path / "robustness.json"
    io.write_text(target, "previous")
    with pytest.raises(OSError, match="disk full"):
        with io.atomic_output(target, overwrite=True) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise OSError("disk full")
    assert target.read_text() == "previous"
    assert _entries(tmp_path) == ["robustness.json"]


def test_a_failed_rename_puts_the_previous_file_back(tmp_path, monkeypatch):
    target = tmp_path / "export"
    target.mkdir()
    (target / "saved_model.pb").write_text("previous")
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.fspath(dst) == str(target) and os.fspath(src).endswith(".tmp"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        with io.atomic_output(target, overwrite=True, directory=True) as tmp:
            (open(os.path.join(tmp, "saved_model.pb"), "w")).close()
    assert (target / "saved_model.pb").read_text() == "previous"
    assert _entries(tmp_path) == ["export"]


def test_nothing_written_is_an_error_and_existing_files_need_overwrite(tmp_path):
    target = tmp_path / "model.bin"
    with io.atomic_output(target) as tmp:
        assert not os.path.exists(target)
        with open(tmp, "w") as f:
            f.write("v1")
    with pytest.raises(RuntimeError, match="produced nothing"):
        with io.atomic_output(target, overwrite=True):
            pass
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with io.atomic_output(target):
            pass
    assert target.read_text() == "v1"
    assert _entries(tmp_path) == ["model.bin"]


def test_write_text_replaces_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "robustness.md"
    io.write_text(str(path), "old\n")
    io.write_text(str(path), "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert _entries(tmp_path) == ["robustness.md"]


def test_new_output_dir_never_reuses_a_folder_with_results(tmp_path):
    first = io.new_output_dir(tmp_path / "evaluation", explicit=False)
    assert first == str(tmp_path / "evaluation") and os.path.isdir(first)
    assert io.new_output_dir(tmp_path / "evaluation", explicit=False) == first  # still empty: reused
    (tmp_path / "evaluation" / "robustness.json").write_text("{}")
    assert io.new_output_dir(tmp_path / "evaluation", explicit=False) == str(tmp_path / "evaluation_2")
    with pytest.raises(FileExistsError, match="already holds results"):
        io.new_output_dir(tmp_path / "evaluation", explicit=True)
    assert (tmp_path / "evaluation" / "robustness.json").read_text() == "{}"
    assert io.new_output_dir(tmp_path / "mine", explicit=True) == str(tmp_path / "mine")

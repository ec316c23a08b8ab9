"""Report files: figures replaced atomically (nothing left behind), the Markdown layout from results alone."""

import os

import pytest
from matplotlib.figure import Figure

from robustdet_tf.evaluation import report
from robustdet_tf.evaluation.protocol import make_protocol
from robustdet_tf.io import write_text


def _entries(directory):
    return sorted(os.listdir(directory))


def test_failed_figure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "bars.png"
    write_text(str(path), "previous")

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        report.save_figure_atomic(Figure(), str(path))
    assert path.read_text(encoding="utf-8") == "previous"
    assert _entries(tmp_path) == ["bars.png"]


def test_figure_is_a_png(tmp_path):
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    path = tmp_path / "curve.png"
    report.save_figure_atomic(figure, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_rows_models_columns_attacks():
    results = {"protocol": make_protocol("reference"), "num_images": 7,
               "models": {"ssd": {"clean": 0.5, "A_cls": 0.0125}, "robustdet": {"clean": 0.48, "A_cls": None}}}
    lines = report.markdown_table(results).splitlines()
    assert "| Model | Clean | A_cls |" in lines
    assert "| ssd | 50.0 | 1.2 |" in lines
    assert "| robustdet | 48.0 | – |" in lines
    assert any("on 7 images" in line and "PGD-20" in line for line in lines)


def test_file_stem_and_fraction():
    assert report.file_stem("SSD-AT(A_cls)") == "SSD-AT_A_cls_"
    assert report.fraction(float("nan")) is None
    assert report.fraction(0.25) == 0.25


def test_sample_pictures_show_the_top_n_above_the_threshold():
    scores = [0.2, 0.9, 0.5, 0.95, 0.31, 0.8, 0.0]
    assert report.detections_to_draw(scores, 6, 0.3, 3) == [3, 1, 5]
    assert report.detections_to_draw(scores, 6, 0.3, 10) == [3, 1, 5, 2, 4]
    assert report.detections_to_draw(scores, 2, 0.3, 10) == [1]  # only the first num_detections count
    assert report.detections_to_draw(scores, 6, 0.99, 10) == []

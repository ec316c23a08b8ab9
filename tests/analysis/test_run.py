"""The analysis settings, findings and figures from hand-built summaries (no model runs here; the end-to-end
``--mode=analyze`` run is in tests/test_main.py)."""

import json

import ml_collections
import numpy as np
import pytest

from configs import demo as demo_config
from robustdet_tf.analysis import plots
from robustdet_tf.analysis.findings import findings
from robustdet_tf.analysis.records import jsonable, write_json
from robustdet_tf.analysis.run import DEFAULT_SETTINGS, FIGURES, check_models, settings_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_settings_default_and_bad_keys_are_refused():
    assert settings_of(ml_collections.ConfigDict({"eval": {}})) == DEFAULT_SETTINGS  # a config without the section
    demo = settings_of(demo_config.get_config())
    assert demo["images"] == 8 and tuple(demo["figures"]) == FIGURES
    for bad, match in (({"imgaes": 3}, "unknown keys"), ({"figures": ("fig9",)}, "figures"),
                       ({"images": 0}, "images")):
        with pytest.raises(ValueError, match=match):
            settings_of(ml_collections.ConfigDict({"analysis": bad}))
    with pytest.raises(ValueError, match="no models"):
        check_models({})


def _summaries():
    layers = ["vgg_0", "conf_0"]
    ent = lambda overall, k: {  # noqa: E731
        "layers": layers, "num_pairs": 4, "ratio": {"median": [overall, None], "mean": [overall, None]},
        "cosine": {"median": [0.5, None], "mean": [0.5, None]}, "overall": {"median": overall, "mean": overall},
        "kernel_ratio": {n: {"median": [0.1 * i for i in range(k)], "mean": [0.1] * k} for n in layers} if k else {}}
    change = lambda m: {"mean": m, "median": m, "fraction_up": 0.25, "per_image": np.array([m, -m])}  # noqa: E731
    conflict = {c: change(0.5) for c in ("clean_to_clean", "clean_to_adv", "adv_to_clean", "adv_to_adv")}
    stats = {"score_threshold": 0.3,
             "confidence": {a: {"mean_score": 0.6, "detections_per_image": 2.0, "scores": np.array([0.6, 0.6])}
                            for a in ("clean", "A_cls")},
             "loss_change": {"A_cls": {"mean_loss_l": 0.1, "mean_loss_c": 2.0, "mean_total": 2.1,
                                       "per_image": np.array([[0.1, 2.0]])}}}
    return {"entanglement": {"ssd": ent(0.9, 0), "robustdet": ent(0.2, 3)},
            "loss_conflict": {"ssd": conflict},
            "attack_statistics": {"ssd": stats},
            "step_sweep": {"ssd": {"A_cls": {0: 0.5, 2: 0.25, 1: 0.3}}}}


def test_findings_say_what_was_measured():
    lines = findings(_summaries(), {**DEFAULT_SETTINGS, "conflict_steps": 3})
    text = "\n".join(lines)
    assert "median of 4 clean/A_cls pairs): ssd 0.9, robustdet 0.2" in text
    assert "R per AAconv kernel k (mean over layers of the median): robustdet 0/0.1/0.2" in text
    assert ("after 3 step(s) on A_cls images, mean loss change of clean images (fraction that rose): ssd +0.5 (25%)"
            in text)
    assert "mean per-image loss change under A_cls (loss_l, loss_c): ssd +0.1, +2" in text
    assert "mAP (%) at 0 / 2 PGD steps of A_cls: ssd 50.0 / 25.0" in text
    assert findings({}, DEFAULT_SETTINGS) == []  # a figure that did not run says nothing


def test_json_has_no_nan_and_figures_are_pngs(tmp_path):
    write_json(str(tmp_path / "x.json"), {"a": np.array([1.0, np.nan]), "b": {2: np.float32(0.5)}, "c": np.int64(3)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1.0, None], "b": {"2": 0.5}, "c": 3}
    assert jsonable((np.bool_(True), float("inf"))) == [True, None]
    s = _summaries()
    rng = np.random.default_rng(0)
    raw_conflict = {"ssd": {c: rng.normal(size=5) for c in ("clean_to_clean", "clean_to_adv", "adv_to_clean",
                                                            "adv_to_adv")}}
    raw_stats = {m: {"score_threshold": 0.3, "scores": {"clean": rng.uniform(0.3, 1, 9), "A_cls": np.zeros(0)},
                     "loss_change": {"A_cls": rng.normal(size=(5, 2))}} for m in ("ssd", "robustdet")}
    paths = [tmp_path / n for n in ("f3.png", "f4.png", "f7ab.png", "f7c.png", "f5.png")]
    plots.plot_loss_conflict(raw_conflict, str(paths[0]), steps=2)
    plots.plot_entanglement(s["entanglement"], str(paths[1]))
    plots.plot_step_sweep(s["step_sweep"], str(paths[2]))
    plots.plot_confidence(raw_stats, str(paths[3]))
    plots.plot_loss_changes(raw_stats, str(paths[4]))
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)

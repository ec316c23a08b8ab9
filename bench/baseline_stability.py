"""Are the MTD and CWAT baselines stable?  Their loss curves in the demo's regime, beside SSD-AT's.

The official code's users report these two baselines as unstable (upstream issues #10 and #13), and a 100-step run
here saw their ``loss_c`` rise mid-run.  This trains SSD-AT(A_cls), MTD and CWAT from one clean SSD with the demo's
adversarial stage (``configs/demo.py``: the interleaved schedule, ε = α = the demo's, the attacked batch renewed
every 5 steps, 16 clean + 16 attacked images a step, Adam, 400 steps), records the 10-step means of ``loss``,
``loss_l`` and ``loss_c``, and evaluates the four models under clean, A_cls, A_loc, MTD and CWA on the demo's
evaluation images with 95 % paired bootstrap intervals.

It prints ONE JSON line: per baseline the curve (step, loss, loss_l, loss_c), whether every value is finite, the
first, lowest and last ``loss_c`` window and the largest rise after the lowest, the seconds it took, and the table.
``--ssd`` reuses a trained clean SSD (a demo's ``<workdir>/ssd``); otherwise the demo's clean SSD is trained first.

    python bench/baseline_stability.py [--workdir /tmp/baseline_stability] [--ssd /tmp/demo/ssd] [--epsilon 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from robustdet_tf import demo  # noqa: E402
from robustdet_tf import initial_model as starts  # noqa: E402
from robustdet_tf import train as train_lib  # noqa: E402
from robustdet_tf.checkpoints import integrity  # noqa: E402
from robustdet_tf.data.sources import load_source  # noqa: E402
from robustdet_tf.evaluation.from_config import evaluate_models  # noqa: E402

BASELINES = {"ssd_at": "cls", "mtd": "mtd", "cwat": "cwa"}
"""Baseline → the method of its training attack (SSD-AT(A_cls) is the demo's, for comparison)."""
WINDOW = 10
TERMS = ("loss", "loss_l", "loss_c")


class Curve(keras.callbacks.Callback):
    """The training logs at every ``WINDOW``-th step: the means over that window (``train.Progress`` resets the
    trackers after each report; ``train.log_every`` is set to the window)."""

    def __init__(self):
        super().__init__()
        self.points: list[dict] = []
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done % WINDOW == 0:
            self.points.append({"step": self.done, **{k: float(logs[k]) for k in TERMS if k in (logs or {})}})


def with_epsilon(config, epsilon: float | None):
    """The demo config with ε = α = ``epsilon`` for the training attack and the evaluation PGD (``None``: the
    demo's)."""
    if epsilon is None:
        return config
    with config.unlocked():
        for section in (config.ssd_at, config.robustdet):
            section.model.adversarial["epsilon"] = section.model.adversarial["step_size"] = float(epsilon)
        overrides = config.eval.overrides.to_dict()
        overrides["pgd"] = {**overrides.get("pgd", {}), "epsilon": float(epsilon), "step_size": float(epsilon)}
        config.eval.overrides = overrides
    return config


def stage(config, method: str):
    """The demo's SSD-AT stage with the training attack ``method`` (``clean_mix``: 16 clean + 16 attacked)."""
    adversarial = dict(config.ssd_at.model.adversarial)
    adversarial["method"] = method
    train = {**dict(config.ssd_at.train), "log_every": WINDOW}
    return demo.stage_config(config, {"adversarial": adversarial, "clean_mix": True}, train)


def stability(points: list[dict]) -> dict:
    """Finite everywhere; ``loss_c`` first, lowest and last window; the largest rise after the lowest window."""
    values = [p["loss_c"] for p in points]
    finite = all(math.isfinite(p[k]) for p in points for k in TERMS if k in p)
    lowest = min(range(len(values)), key=values.__getitem__)
    after = values[lowest:]
    return {"finite": finite, "loss_c_first": values[0], "loss_c_lowest": values[lowest],
            "loss_c_lowest_step": points[lowest]["step"], "loss_c_last": values[-1],
            "loss_c_rise_after_lowest": max(after) - values[lowest],
            "loss_c_last_over_lowest": values[-1] / values[lowest] if values[lowest] else None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/baseline_stability")
    parser.add_argument("--ssd", default="", help="a demo's clean-SSD folder to reuse (holds model.keras)")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="ε = α of the training attacks and the evaluation PGD (default: the demo's)")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    quiet = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    config = with_epsilon(demo_config.get_config(), args.epsilon)
    start = time.time()
    source = load_source(config.data, "train")
    if args.ssd:
        ssd = integrity.load_model_file(os.path.join(args.ssd, "model.keras"))
    else:
        ssd = train_lib.train_in_workdir(demo.stage_config(config, {}, {}), os.path.join(args.workdir, "ssd"),
                                         source=source, printer=quiet)
    models, baselines = {"ssd": ssd}, {}
    for name, method in BASELINES.items():
        began = time.time()
        stage_config = stage(config, method)
        starts.seed_run(stage_config)
        trainer = train_lib.Trainer(stage_config, os.path.join(args.workdir, name), source=source,
                                    model=starts.model_from_ssd(ssd, stage_config))
        if trainer.start_step:
            raise SystemExit(f"{args.workdir}/{name} holds a trained stage already: its curve is not recorded; give "
                             "another --workdir.")
        curve = Curve()
        quiet(f"== {name}: training attack {method} ==")
        trainer.run(callbacks=[curve], printer=quiet)
        models[name] = trainer.model
        baselines[name] = {"method": method, "seconds": round(time.time() - began, 1), **stability(curve.points),
                           "curve": [{k: round(v, 4) if isinstance(v, float) else v for k, v in p.items()}
                                     for p in curve.points]}
    eval_config = with_epsilon(demo_config.get_config(), args.epsilon)
    with eval_config.unlocked():
        eval_config.eval.attacks = ("clean", "A_cls", "A_loc", "MTD", "CWA")
        eval_config.eval.sample_images = 0
    results = evaluate_models(eval_config, models, os.path.join(args.workdir, "table"), printer=quiet)
    cells = {model: {attack: None if c["mAP"] is None else
                     [round(100 * c["mAP"], 2), round(100 * c["ci_low"], 2), round(100 * c["ci_high"], 2)]
                     for attack, c in row.items()} for model, row in results["cells"].items()}
    record = {
        "bench": "baseline_stability",
        "schedule": {"steps": int(config.ssd_at.train.steps), "batch": f"{config.ssd_at.train.batch_size} clean + "
                     f"{config.ssd_at.train.batch_size} attacked", "optimizer": config.ssd_at.train.optimizer,
                     "learning_rate": float(config.ssd_at.train.learning_rate),
                     "epsilon": float(config.ssd_at.model.adversarial.epsilon),
                     "renewed_every": int(config.ssd_at.model.adversarial.steps), "window": WINDOW},
        "baselines": baselines,
        "num_images": results["num_images"],
        "table_map_percent_with_95ci": cells,
        "differences_points_with_95ci": [
            {"attack": d["attack"], "models": f"{d['model_a']} − {d['model_b']}",
             "value": [round(100 * d["difference"], 2), round(100 * d["ci_low"], 2), round(100 * d["ci_high"], 2)]}
            for d in results["differences"]],
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()

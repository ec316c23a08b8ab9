"""robustdet-tf command line.

    python main.py                                   # the embedded demo (configs/demo.py, workdir runs/demo)
    python main.py --mode=train --config=configs/ssd300_voc.py --config.data.source=local \
        --config.data.root=/data/VOCdevkit --workdir=runs/ssd300_voc
    python main.py --mode=evaluate --config=configs/ssd300_voc.py --workdir=runs/ssd300_voc
    python main.py --mode=attack --config=configs/ssd300_voc.py --workdir=runs/ssd300_voc
    python main.py --mode=export --config=configs/ssd300_voc.py --workdir=runs/ssd300_voc
    python main.py --mode=import --config=configs/ssd300_voc.py --checkpoint=weights/ssd300_mAP_77.43_v2.pth

Configs are ``ml_collections`` files in ``configs/``; override any key with ``--config.<a>.<b>=value``.  A key the
config does not define is refused before anything runs.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.", lock_config=True)
_MODE = flags.DEFINE_enum(
    "mode", "demo", ["demo", "train", "evaluate", "attack", "export", "import"], "What to run."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config file name>).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "--mode=import: the official PyTorch .pth file.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", "saved_models", "--mode=export: where exports go.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None,
    "--mode=evaluate / attack: a new or empty folder for the results (default: a new <workdir>/evaluation[_N] or "
    "<workdir>/adversarial[_N]); a folder holding results is refused, so nothing is overwritten.")


def default_workdir() -> str:
    if _WORKDIR.value:
        return _WORKDIR.value
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    name = os.path.splitext(os.path.basename(path))[0] if path else "demo"
    return os.path.join("runs", name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from robustdet_tf import cli

    config, workdir, mode = _CONFIG.value, default_workdir(), _MODE.value
    import keras

    keras.utils.set_random_seed(int(config.train.get("seed", 0)) if "train" in config else 0)  # initial weights
    if mode == "import":
        cli.run_import(config, workdir, _CHECKPOINT.value)
    elif mode == "export":
        cli.run_export(config, workdir, _EXPORT_DIR.value)
    elif mode in ("evaluate", "attack"):
        getattr(cli, f"run_{mode}")(config, workdir, output_dir=_OUTPUT_DIR.value)
    else:
        getattr(cli, f"run_{mode}")(config, workdir)


if __name__ == "__main__":
    app.run(main)

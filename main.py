"""robustdet-tf command line.

    python main.py                                   # the embedded demo (configs/demo.py, workdir runs/demo)
    python main.py --mode=train --config=configs/ssd300_voc.py --config.data.source=local \
        --config.data.root=/data/VOCdevkit --workdir=runs/ssd300_voc
    python main.py --mode=evaluate --config=configs/ssd300_voc.py --workdir=runs/ssd300_voc
    python main.py --mode=attack --config=configs/ssd300_voc.py --workdir=runs/ssd300_voc
    python main.py --mode=export --config=configs/ssd300_voc.py --workdir=runs/ssd300_voc
    python main.py --mode=import --config=configs/ssd300_voc.py --checkpoint=weights/ssd300_mAP_77.43_v2.pth
    python main.py --mode=analyze --workdir=runs/demo                # the paper's diagnostics of the demo's models

Configs are ``ml_collections`` files in ``configs/``; override any key with ``--config.<a>.<b>=value``.  A key the
config does not define is refused before anything runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# TensorFlow's C++ start-up notices: INFO lines (oneDNN on, CPU instructions) and absl's remark that they come before
# its logging is set up.  They are written while TensorFlow is imported, before any Python logging exists, so no
# verbosity setting reaches them.
_STARTUP_NOTICES = re.compile(r"absl::InitializeLog\(\)|\] oneDNN custom operations are on|cpu_feature_guard\.cc"
                              r"|^To enable the following instructions")


def _asks_for_logs(argv) -> bool:
    """Whether the command line sets absl's verbosity (``--verbosity=0`` / ``-v 0`` shows TensorFlow's INFO lines)."""
    return any(a.split("=", 1)[0] in ("--verbosity", "-v") or (a.startswith("-v") and a[2:].lstrip("-").isdigit())
               for a in argv[1:])


def _import_tensorflow(argv) -> None:
    """Import TensorFlow with its start-up notices held back (every other line it writes is passed on), unless the
    command line asks for logs."""
    if _asks_for_logs(argv):
        import tensorflow  # noqa: F401
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if not _STARTUP_NOTICES.search(line)]
    for line in kept:
        print(line, file=sys.stderr)


_import_tensorflow(sys.argv)


def _unknown_key_exit(err: Exception, argv) -> None:
    """config_flags met an override of a key the config does not define: say which, and stop."""
    detail = re.sub(r"\\+n|\n", " ", str(err.args[0] if err.args else err))
    detail = detail.replace("\\", "").replace("'", "").strip("\" ")
    overrides = [a for a in argv if a.startswith("--config.")]
    from robustdet_tf.behaviour import renamed_key_message

    for override in overrides:
        message = renamed_key_message(override[2:].split("=", 1)[0])
        if message:
            print(f"main.py: {override}: {message} Nothing was run.", file=sys.stderr)
            sys.exit(2)
    print(f"main.py: unknown config key {detail} (in {' '.join(overrides)}); nothing was run. Every key: "
          "docs/configuration.md.", file=sys.stderr)
    sys.exit(2)


try:  # config_flags applies the --config.* overrides of sys.argv already here
    _CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.",
                                              lock_config=True)
except (AttributeError, KeyError) as error:
    _unknown_key_exit(error, sys.argv)
MODES = ["demo", "train", "evaluate", "attack", "export", "import", "analyze"]
_MODE = flags.DEFINE_enum("mode", "demo", MODES, "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config file name>).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "--mode=import: the official PyTorch .pth file.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", "saved_models", "--mode=export: where exports go.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None,
    "--mode=evaluate / attack / analyze: a new or empty folder for the results (default: a new "
    "<workdir>/evaluation[_N], <workdir>/adversarial[_N] or <workdir>/analysis[_N]); a folder holding results is "
    "refused, so nothing is overwritten (except an unfinished --mode=evaluate table, which is resumed; under "
    "TF_CONFIG every worker needs the same --output_dir).")


def default_workdir() -> str:
    if _WORKDIR.value:
        return _WORKDIR.value
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    name = os.path.splitext(os.path.basename(path))[0] if path else "demo"
    return os.path.join("runs", name)


def _default_config(argv):
    """The config file's defaults (the one ``--config=`` names, else the demo), to explain a bad override."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "configs/demo.py").split(":")[0]
    try:
        spec = importlib.util.spec_from_file_location("_config_for_help", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    except Exception:  # noqa: BLE001 (only used to word an error message)
        return None


def parse_flags(argv):
    """absl's parser, with a message that names the flag, the value and what it accepts."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        from robustdet_tf.cli import explain_flag_error

        print(f"main.py: {explain_flag_error(str(err), _default_config(argv), MODES)}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as err:
        _unknown_key_exit(err, argv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # absl raises its default verbosity from WARNING to INFO once flags are parsed, which prints TensorFlow's
        # internal INFO lines (e.g. every checkpoint's "Sharding callback duration"); the console is for progress,
        # tables and findings.  --verbosity=0 shows them again.
        logging.set_verbosity(logging.WARNING)
    from robustdet_tf import cli

    config, workdir, mode = _CONFIG.value, default_workdir(), _MODE.value
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        print(f"main.py --mode={mode}: --workdir={workdir} is a file, not a folder; name a folder (new, or one this "
              "program wrote). Nothing was run.", file=sys.stderr)
        sys.exit(2)
    strategy = None
    if mode == "train":  # before TensorFlow runs anything: MultiWorkerMirroredStrategy requires it
        from robustdet_tf.distribution import make_strategy

        strategy = make_strategy(str(config.train.get("strategy", "auto")))
    import keras

    keras.utils.set_random_seed(int(config.train.get("seed", 0)) if "train" in config else 0)  # initial weights
    try:
        if mode == "import":
            cli.run_import(config, workdir, _CHECKPOINT.value)
        elif mode == "export":
            cli.run_export(config, workdir, _EXPORT_DIR.value)
        elif mode == "train":
            cli.run_train(config, workdir, strategy=strategy)
        elif mode in ("evaluate", "attack", "analyze"):
            getattr(cli, f"run_{mode}")(config, workdir, output_dir=_OUTPUT_DIR.value)
        else:
            getattr(cli, f"run_{mode}")(config, workdir)
    except cli.USER_ERRORS as err:
        if os.environ.get("ROBUSTDET_TRACEBACK"):
            raise
        print(f"main.py --mode={mode}: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

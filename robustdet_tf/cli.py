"""What each ``main.py --mode`` does, as plain functions of ``(config, workdir)`` so tests can call them.

``train`` trains (and resumes) in the workdir; ``evaluate`` scores the trained model under the configured attacks;
``attack`` writes the adversarial images of the evaluation set (exact pixels) and the mAP drop they cause;
``analyze`` runs the paper's diagnostics (loss conflict, gradient entanglement, PGD-step sweep, confidence and loss
changes) on the workdir's model(s); ``demo`` runs the embedded end-to-end demonstration;
``export`` and ``import`` move models to and from SavedModel / TFLite / official PyTorch checkpoints.  The work is
done by the rooms below (``train``, ``evaluation``, ``export``, ``checkpoints``, ``demo``); this module only wires
them to the workdir.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Sequence
from typing import Any

import keras

from robustdet_tf import demo
from robustdet_tf import train as train_lib
from robustdet_tf import workdir as workdir_lib
from robustdet_tf.analysis.run import analyze_models
from robustdet_tf.checkpoints import integrity
from robustdet_tf.distribution import num_workers
from robustdet_tf.evaluation.from_config import attack_dataset, eval_strategy, evaluate_models
from robustdet_tf.evaluation.sharded import is_unfinished
from robustdet_tf.export import export_all
from robustdet_tf.importers import backbone
from robustdet_tf.importers.torch_import import CheckpointMismatchError, import_checkpoint, read_state_dict
from robustdet_tf.io import DestinationExistsError, new_output_dir

load_trained_model = train_lib.load_trained_model

USER_ERRORS = (
    ValueError, FileNotFoundError, FileExistsError, OSError, ImportError, RuntimeError,
)
"""What ``main.py`` reports as one line (the message names the thing and the fix) instead of a traceback; set
``ROBUSTDET_TRACEBACK=1`` to see the traceback anyway."""


def explain_flag_error(message: str, config: Any, modes: Sequence[str]) -> str:
    """absl's flag-parsing message rewritten to name the flag, the value and what it accepts.

    ``config`` is the config file's default ``ConfigDict`` (for the type and default of a ``--config.*`` key).
    """
    match = re.match(r"flag --([^=]+)=(.*?): (.*)", message, re.S)
    if not match:
        return message
    name, value, detail = match.groups()
    if name == "mode":
        return f"--mode={value!r} is not a mode; use one of: {', '.join(modes)}."
    if name.startswith("config.") and config is not None:
        node = config
        try:
            for key in name.split(".")[1:]:
                node = node[key]
        except (KeyError, AttributeError, TypeError):
            return f"--{name}: the config has no such key ({detail.strip()}); see docs/configuration.md."
        kind = type(node).__name__ if node is not None else "a value"
        return (f"--{name}={value!r} is not a valid {kind}: {detail.strip()}. The key's default is {node!r}, e.g. "
                f"--{name}={node!r}; see docs/configuration.md.")
    return f"--{name}={value!r}: {detail.strip()}"
run_train = train_lib.train_in_workdir


def run_evaluate(config, workdir: str, models: dict | None = None, output_dir: str | None = None,
                 printer=print) -> dict | None:
    """Robustness table of the workdir's model (the demo's folder: its three models; or ``models``) under
    ``config.eval.attacks``, written to ``output_dir`` or to a new ``<workdir>/evaluation[_N]`` folder.

    An ``output_dir`` holding results is refused, except an unfinished table (``shards/`` without
    ``robustness.json``), which is resumed: its finished shards are reused.  Under ``TF_CONFIG`` every worker must be
    given the same ``output_dir``; the models are loaded under ``config.eval.strategy``'s scope.  Returns ``None`` on
    a worker other than the chief.
    """
    if num_workers() > 1 and output_dir is None:
        raise ValueError(f"TF_CONFIG names {num_workers()} workers: they evaluate into one folder, so pass the same "
                         "--output_dir=DIR (on a filesystem every worker sees) to each of them.")
    strategy = eval_strategy(config.eval)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        models = models or workdir_models(workdir, config)  # its own model, or the demo's ssd/, ssd_at/, robustdet/
    folder = _evaluation_folder(output_dir, workdir, printer)
    try:
        results = evaluate_models(config, models, folder, printer=printer, strategy=strategy)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise OSError(errno.ENOSPC, f"no space left on the device of {folder} while writing the evaluation "
                      f"({err.filename or err.strerror}); free some space (df -h {folder}) and run the same command "
                      f"with --output_dir={folder}: the table resumes from the cells and shards it finished") from None
    if results is not None:
        printer(f"robustness table, JSON and figures in {folder}")
    return results


def _evaluation_folder(output_dir: str | None, workdir: str, printer) -> str:
    """A new ``<workdir>/evaluation[_N]``, or ``output_dir`` if it is new, empty or an unfinished table (another
    worker may be creating it at this very moment, hence the second look after a refusal)."""
    if output_dir is None:
        return new_output_dir(os.path.join(workdir, "evaluation"), explicit=False)
    try:
        return new_output_dir(output_dir, explicit=True)
    except FileExistsError:
        if not is_unfinished(output_dir):
            raise
    folder = os.path.abspath(output_dir)
    printer(f"resuming the unfinished evaluation in {folder}")
    return folder


def run_attack(config, workdir: str, output_dir: str | None = None, printer=print) -> dict:
    """The evaluation set under ``config.eval.attack`` as exact uint8 PNGs (clean and attacked) in ``output_dir``
    or a new ``<workdir>/adversarial[_N]`` folder, with the mAP drop measured on those pixels."""
    model = load_trained_model(workdir, config)
    folder = new_output_dir(output_dir or os.path.join(workdir, "adversarial"), explicit=output_dir is not None)
    return attack_dataset(config, model, folder, printer=printer)


def workdir_models(workdir: str, config) -> dict[str, keras.Model]:
    """The models ``--mode=analyze`` looks at: the workdir's own (``model.keras`` or its latest checkpoint), else
    every sub-folder's ``model.keras`` (the demo's ``ssd/``, ``ssd_at/``, ``robustdet/``), ordered plain SSD,
    adversarially trained SSD, RobustDet."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir} does not exist; point it at a trained workdir (e.g. the demo's "
                                "runs/demo) or train one with --mode=train first.")
    own = os.path.exists(os.path.join(workdir, "model.keras")) or os.path.isdir(os.path.join(workdir, "checkpoints"))
    if own:
        return {os.path.basename(os.path.normpath(workdir)): load_trained_model(workdir, config)}
    found = sorted(d for d in os.listdir(workdir) if os.path.isfile(os.path.join(workdir, d, "model.keras")))
    if not found:
        raise FileNotFoundError(f"{workdir} holds no model: no model.keras (or checkpoints) in it and no sub-folder "
                                "with a model.keras; run --mode=train (or the demo) with this --workdir first.")
    models = {d: integrity.load_model_file(os.path.join(workdir, d, "model.keras")) for d in found}

    def rank(item):
        name, model = item
        can = model.capabilities()
        kind = 2 if can.routed else 1 if can.adversarial else 0
        return kind, name

    return dict(sorted(models.items(), key=rank))


def run_analyze(config, workdir: str, output_dir: str | None = None, printer=print) -> dict:
    """The paper's diagnostics of the workdir's model(s), written as JSON and PNG to ``output_dir`` (refused if it
    holds results) or a new ``<workdir>/analysis[_N]``; prints one line per finding."""
    models = workdir_models(workdir, config)
    folder = new_output_dir(output_dir or os.path.join(workdir, "analysis"), explicit=output_dir is not None)
    results = analyze_models(config, models, folder, printer=printer)
    for line in results["findings"]:
        printer(f"finding: {line}")
    printer(f"analysis JSON and figures in {folder}")
    return results


def run_export(config, workdir: str, export_dir: str, printer=print) -> dict:
    model = load_trained_model(workdir, config)
    try:
        paths = export_all(model, export_dir)
    except DestinationExistsError as err:
        raise FileExistsError(f"{err.path} already holds an export; the command line never replaces one: "
                              "pass --export_dir=<a new folder>, or move the old export away. Nothing was written."
                              ) from None
    printer(f"exported {paths}")
    return paths


def run_import(config, workdir: str, checkpoint: str | None, printer=print) -> str:
    if not checkpoint:
        raise ValueError("--mode=import needs --checkpoint=<official .pth file>")
    workdir_lib.check_not_foreign(workdir)
    workdir_lib.check_workdir(workdir, config)
    path = os.path.join(workdir, "model.keras")
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; import into an empty --workdir so nothing is overwritten")
    state = read_state_dict(checkpoint)
    if backbone.is_vgg_backbone_state(state):  # ssd.pytorch's vgg16_reducedfc.pth: a fresh model on that trunk
        model = backbone.model_with_backbone(config.model, state, checkpoint)
    else:
        model = _import_or_expand(state, config, checkpoint, printer)
    # the record first: a kill between the two leaves a folder of ours without a model, which the import refills
    workdir_lib.write_json_atomically(workdir_lib.model_config_dict(config),
                                      os.path.join(workdir, workdir_lib.MODEL_RECORD))
    workdir_lib.save_model_atomically(model, path)
    printer(f"imported {checkpoint} into {path}")
    return path


def _import_or_expand(state, config, checkpoint: str, printer) -> keras.Model:
    """The checkpoint in the configured model; a clean SSD checkpoint given with a RobustDet config is expanded into
    it (K identical kernels per convolution, the AID and any CFR parts fresh: how the reference starts RobustDet)."""
    try:
        return import_checkpoint(state, config.model)
    except CheckpointMismatchError as mismatch:
        if config.model.get("kind", "ssd") != "robustdet":
            raise
        try:
            model = import_checkpoint(state, config.model, expand_clean_ssd=True)
        except CheckpointMismatchError:
            raise mismatch from None
    printer(f"{checkpoint} is a clean SSD checkpoint: expanded into the configured RobustDet (K identical kernels "
            "per convolution; the AID and any CFR parts start fresh). Train it with --mode=train in this workdir.")
    return model


def run_demo(config, workdir: str, printer=print) -> dict:
    return demo.run(config, workdir, printer=printer)

"""Robustness-evaluation protocols: which attacks a table has and with which settings
(docs/reference.md#evaluation-protocol).

Why a module of its own: a robustness number is meaningless without the attack settings it was measured under, so
a protocol is explicit data (``PROTOCOLS``), merged with user overrides by ``make_protocol`` (unknown keys fail),
described in one sentence for the table caption, and turned into attack functions by ``make_attack``.

* ``"reference"`` — what ``eval_attack.py`` does: PGD-20 with ε = α = 8 and no random start for A_cls, A_loc,
  con, MTD and CWA, each image attacked as if alone (the reference runs batch size 1: MTD's loc/cls choice and CWA's
  class averages are per image, so a table does not depend on ``eval.batch_size``); DAG with 150 steps of
  γ = 0.5, ``variant="reference"`` (unbounded, gradient at the clean image + last step); VOC07 11-point AP with
  the reference's coordinate offsets (``voc_offsets="reference"``).
* ``"strong"`` — a stronger, corrected evaluation: PGD with a random start, α = 2 and 50 steps (ε = 8), MTD's choice
  per image, and the ε-bounded, early-stopping DAG (``variant="corrected"``).
* ``"adaptive"`` — ``strong`` made stronger still: APGD's step schedule from 2ε with two restarts and the best
  iterate per image for every PGD column, and the columns that attack RobustDet's discriminator
  (``attacks/adaptive.py``).  Use it with the ``Adaptive``, ``FixedPi``, ``AID`` and ``Worst`` columns.

The adaptive columns exist under every protocol: ``Adaptive`` (detection loss − λ·D(π_adv, π_clean): fool the
detector, keep the AID's mixture clean), ``FixedPi`` (the gradient of the detector run with the clean image's π)
and ``AID`` (D alone: attack the router; not applicable to models without an AID, its cell is then empty).
``TOG_vanishing``, ``TOG_fabrication`` and ``TOG_mislabeling`` are TOG's targeted attacks (Chow et al. 2020;
objectives in ``attacks/objectives.py``): every prior towards background, every prior away from it, the clean
detections relabelled with their most likely wrong class.  They take the protocol's PGD settings (TOG's own are
ε = 8/255, α = 2/255, 10 steps with a random start: ``{"pgd": {"epsilon": 8, "step_size": 2, "steps": 10,
"random_start": true}}`` in pixels).
``Transfer`` is A_cls made against the table's transfer source and evaluated on every model
(``evaluation/transfer.py``).  ``Worst`` is the per-image worst case over the table's other attack columns
(``evaluation/worst_case.py``).  ``Corrupt`` is mPC over the natural corruptions and severities of
``protocol["corruptions"]`` (``evaluation/corruptions.py``): not an attack, so it joins neither the worst case nor
the lowest cell.  ``Patch`` pastes a universal patch (``attacks/patch.py``, settings ``protocol["patch"]``) fitted
per model on training images.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import partial
from typing import Any

from robustdet_tf.attacks.adaptive import applies_to
from robustdet_tf.attacks.dag import dag
from robustdet_tf.attacks.patch import PatchSpec
from robustdet_tf.attacks.pgd import pgd
from robustdet_tf.attacks.spec import AttackSpec, DAGSpec
from robustdet_tf.behaviour import CORRECTED, REFERENCE, checked, migrated_protocol, refuse_renamed_keys
from robustdet_tf.evaluation import corruptions
from robustdet_tf.evaluation.evaluate import AttackFn

PAPER_ATTACKS: tuple[str, ...] = ("clean", "A_cls", "A_loc", "con", "MTD", "CWA", "DAG")
"""The columns of the paper's Table 1."""
ATTACKS: tuple[str, ...] = (*PAPER_ATTACKS, "Adaptive", "FixedPi", "AID", "TOG_vanishing", "TOG_fabrication",
                             "TOG_mislabeling", "Transfer", "Worst", "Corrupt", "Patch")
"""Every column a table can have: Table 1's, the attacks on the AID, TOG's targeted attacks, A_cls transferred from
the table's source model and the per-image worst case."""

# Table name → PGD objective of ``attacks.pgd`` (DAG, Worst and clean are handled separately).
PGD_METHODS: dict[str, str] = {"A_cls": "cls", "A_loc": "loc", "con": "con", "MTD": "mtd", "CWA": "cwa",
                               "Adaptive": "adaptive", "FixedPi": "fixed_pi", "AID": "aid",
                               "TOG_vanishing": "tog_vanishing", "TOG_fabrication": "tog_fabrication",
                               "TOG_mislabeling": "tog_mislabeling"}
ADAPTIVE_COLUMNS = ("Adaptive", "FixedPi", "AID")

UNATTACKED: tuple[str, ...] = ("clean", corruptions.COLUMN)
"""Columns that attack nothing: they join neither the per-image worst case nor the lowest attacked cell."""
COLUMN_TITLES: dict[str, str] = {"clean": "Clean", "FixedPi": "Fixed π", "AID": "AID only", "Worst": "Worst case",
                                 "Corrupt": "Corrupt (mPC)"}

_REFERENCE_PGD = {"restarts": 1, "step_schedule": "constant"}
_ADAPTIVE_DEFAULTS = {"aid_weight": 1.0, "divergence": "kl", "base": "cls"}

PROTOCOLS: dict[str, dict[str, Any]] = {
    "reference": {
        "name": "reference",
        "metric": "voc07",
        "voc_offsets": REFERENCE,
        "seed": 0,
        "pgd": {
            "epsilon": 8.0,
            "step_size": 8.0,
            "steps": 20,
            "random_start": False,
            "con_weights": [1.0, 1.0],
            "mtd_per_image": True,  # eval_attack.py attacks one image at a time
            "cwa_per_image": True,
            **_REFERENCE_PGD,
        },
        "dag": {"steps": 150, "gamma": 0.5, "variant": REFERENCE, "epsilon": None},
        "adaptive": dict(_ADAPTIVE_DEFAULTS),
        "corruptions": copy.deepcopy(corruptions.DEFAULT_SETTINGS),
        "patch": PatchSpec().to_dict(),
    },
    "strong": {
        "name": "strong",
        "metric": "voc07",
        "voc_offsets": REFERENCE,
        "seed": 0,
        "pgd": {
            "epsilon": 8.0,
            "step_size": 2.0,
            "steps": 50,
            "random_start": True,
            "con_weights": [1.0, 1.0],
            "mtd_per_image": True,
            "cwa_per_image": True,
            **_REFERENCE_PGD,
        },
        "dag": {"steps": 150, "gamma": 0.5, "variant": CORRECTED, "epsilon": 8.0},
        "adaptive": dict(_ADAPTIVE_DEFAULTS),
        "corruptions": copy.deepcopy(corruptions.DEFAULT_SETTINGS),
        "patch": PatchSpec().to_dict(),
    },
}
PROTOCOLS["adaptive"] = {
    **copy.deepcopy(PROTOCOLS["strong"]),
    "name": "adaptive",
    "pgd": {**PROTOCOLS["strong"]["pgd"], "restarts": 2, "step_schedule": "apgd"},
}


# -- protocol -----------------------------------------------------------------------------------------------------
def _merge(base: dict[str, Any], overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if key not in base:
            refuse_renamed_keys({key: value}, where.rstrip("."))
            raise KeyError(f"protocol override '{where}{key}' is not a protocol key; accepted keys at this level: "
                           f"{sorted(base)}.")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise TypeError(f"protocol override '{where}{key}' must be a dict of {sorted(base[key])}, got "
                                f"{value!r}.")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def make_protocol(protocol: str | Mapping[str, Any] = "reference", overrides: Mapping[str, Any] | None = None):
    """A full protocol dict: a predefined one by name (or a complete dict) with ``overrides`` deep-merged in.

    ``overrides`` may only use existing keys (a typo fails with the list of keys), e.g.
    ``make_protocol("reference", {"pgd": {"steps": 5}, "dag": {"steps": 10}})``.
    """
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown robustness protocol {protocol!r}; choose one of {sorted(PROTOCOLS)} or pass a "
                             "protocol dict.")
        base = copy.deepcopy(PROTOCOLS[protocol])
    else:
        base = _merge(copy.deepcopy(PROTOCOLS["reference"]), migrated_protocol(protocol), "")  # older files too
    result = _merge(base, overrides or {}, "")
    if result["pgd"]["steps"] < 0 or result["dag"]["steps"] < 0:
        raise ValueError(f"protocol steps must be >= 0; got pgd.steps={result['pgd']['steps']}, "
                         f"dag.steps={result['dag']['steps']}.")
    negative = [f"pgd.{k}={result['pgd'][k]}" for k in ("epsilon", "step_size") if float(result["pgd"][k]) < 0]
    if negative:
        raise ValueError(f"protocol {', '.join(negative)} is negative: the L∞ budget and step of every PGD column "
                         "must be >= 0 (the paper: pgd.epsilon = pgd.step_size = 8; set them with "
                         "--config.eval.overrides='{\"pgd\": {\"epsilon\": 8, \"step_size\": 8}}').")
    corruptions.check_settings(result["corruptions"])
    PatchSpec.from_dict(result["patch"], where="protocol patch")
    checked("protocol voc_offsets", result["voc_offsets"])
    checked("protocol dag.variant", result["dag"]["variant"])
    if result["dag"]["variant"] == CORRECTED and result["dag"]["epsilon"] is None:
        raise ValueError("protocol dag.variant='corrected' (bounded DAG) needs dag.epsilon, e.g. 8.0.")
    return result


def describe_protocol(protocol: Mapping[str, Any]) -> str:
    """One sentence describing a protocol, for the Markdown caption."""
    protocol = migrated_protocol(protocol)  # results files of older versions
    p, d = protocol["pgd"], protocol["dag"]
    start = "random start" if p["random_start"] else "no random start"
    restarts, schedule = p.get("restarts", 1), p.get("step_schedule", "constant")  # results files of older versions
    if restarts > 1 or schedule != "constant":
        step = "APGD step schedule from 2ε" if schedule == "apgd" else f"α = {p['step_size']:g}"
        start = f"{start}, {restarts} run(s), best iterate per image; {step}"
    else:
        start = f"α = {p['step_size']:g}, {start}"
    a = protocol.get("adaptive", _ADAPTIVE_DEFAULTS)
    adaptive = f"adaptive attacks on {a['base']} − {a['aid_weight']:g}·{a['divergence'].upper()}(π)"
    scope = {True: "per image", False: "per batch"}
    mtd, cwa = bool(p["mtd_per_image"]), bool(p.get("cwa_per_image", False))  # results files of older versions
    coupling = (f"MTD choice and CWA classes {scope[mtd]}" if mtd == cwa else
                f"MTD choice {scope[mtd]}, CWA classes {scope[cwa]}")
    if d["variant"] == REFERENCE:
        dag_text = f"DAG {d['steps']} steps, γ = {d['gamma']}, as the reference (unbounded)"
    else:
        dag_text = f"DAG {d['steps']} steps, γ = {d['gamma']}, bounded ε = {d['epsilon']:g}, early stop"
    return (f"PGD-{p['steps']}, ε = {p['epsilon']:g}, {start}; {coupling}; "
            f"{dag_text}; {adaptive}; metric {protocol['metric']}.")


def attack_spec(name: str, protocol: Mapping[str, Any]) -> AttackSpec:
    """The ``AttackSpec`` of a PGD-family column (``A_cls``, ``A_loc``, ``con``, ``MTD``, ``CWA``) of a protocol."""
    if name not in PGD_METHODS:
        raise ValueError(f"{name!r} is not a PGD-family column; attack_spec takes one of {sorted(PGD_METHODS)}.")
    settings = dict(protocol["pgd"])
    if name == "MTD":  # MTD's per-step choice is its own schedule: plain steps, final iterate
        settings.update(_REFERENCE_PGD)
    if name in ADAPTIVE_COLUMNS:
        settings.update(protocol["adaptive"])
    return AttackSpec(method=PGD_METHODS[name], seed=int(protocol["seed"]), **settings)


def dag_spec(protocol: Mapping[str, Any]) -> DAGSpec:
    """The ``DAGSpec`` of a protocol's DAG column."""
    d = protocol["dag"]
    return DAGSpec(steps=d["steps"], gamma=d["gamma"], variant=d["variant"],
                   epsilon=None if d["variant"] == REFERENCE else d["epsilon"], seed=int(protocol["seed"]))


def column_applies(name: str, model) -> bool:
    """Whether a column means something for ``model`` (the ``AID`` column needs a discriminator to attack)."""
    return name not in PGD_METHODS or applies_to(PGD_METHODS[name], model)


def make_attack(name: str, protocol: Mapping[str, Any]) -> AttackFn | None:
    """The attack function ``(model, images, targets) → adversarial images`` of a table column (``None`` = clean)."""
    if name == "clean":
        return None
    if name == "DAG":
        return partial(dag, spec=dag_spec(protocol))
    if name in PGD_METHODS:
        return partial(pgd, spec=attack_spec(name, protocol))
    if name == "Transfer":
        raise ValueError("the 'Transfer' column attacks a source model of the table: use "
                         "evaluation.transfer.transfer_attack(...) or evaluate_robustness(attacks=[..., 'Transfer']).")
    if name == corruptions.COLUMN or corruptions.is_sub_column(name):
        raise ValueError("the 'Corrupt' column evaluates corrupted images, it attacks nothing: use "
                         "evaluate_robustness(attacks=[..., 'Corrupt']) (settings: protocol['corruptions']).")
    if name == "Patch":
        raise ValueError("the 'Patch' column pastes a patch fitted per model on training images: use "
                         "evaluate_robustness(attacks=[..., 'Patch'], run=TableRun(patch_batches=...)) or "
                         "attacks.patch.patch_attack(fit_universal_patch(model, batches, spec), spec).")
    if name == "Worst":
        raise ValueError("the 'Worst' column is built from the other columns of a table: use "
                         "evaluation.worst_case.worst_case_attack(...) or evaluate_robustness(attacks=[..., 'Worst']).")
    raise ValueError(f"unknown attack {name!r}; choose from {ATTACKS}.")

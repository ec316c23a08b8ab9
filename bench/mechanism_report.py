"""The regime search's JSON lines as the Markdown table of docs/results/mechanism.md, and the setting it chooses.

Why a script: the results page is rewritten from ``bench/results/mechanism.jsonl`` whenever the search grows, so its
numbers are the lines' numbers.  The chosen setting is the cheapest one that meets the issue's aim (``aid_auc ≥ 0.9``
and the lower end of SSD-AT − SSD under A_cls above 0); cheapest by the work of the adversarial stages,
``adversarial_steps × width²`` (the convolutions' cost grows with the square of the width; the recorded seconds are
kept in the lines but were measured on a machine that was not always idle).

    python bench/mechanism_report.py [bench/results/mechanism.jsonl]
"""

from __future__ import annotations

import json
import os
import sys

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mechanism.jsonl")


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def cost(record: dict) -> float:
    return float(record["adversarial_steps"]) * float(record["width"]) ** 2


def _diff(d: dict) -> str:
    return f"{d['value']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"


def _cell(cells: dict, model: str, attack: str) -> str:
    return f"{cells[model][attack][0]:.1f}"


def table(records: list[dict]) -> str:
    head = ("| ε | adv. steps | width | RobustDet | AID AUC [95 %] | AUC at start | AUC, made on SSD | kernel spread | "
            "π shift | "
            "L_aid end | SSD clean / A_cls | SSD-AT clean / A_cls | RobustDet clean / A_cls | SSD-AT − SSD A_cls | "
            "RobustDet − SSD-AT A_cls | RobustDet − SSD-AT clean | aim |")
    rows = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in sorted(records, key=lambda r: (r["width"], r["epsilon"], r.get("variant", "base"),
                                            r["adversarial_steps"], r["seed"])):
        start = r.get("aid_auc_at_start")
        rows.append("| " + " | ".join([
            f"{r['epsilon']:g}", str(r["adversarial_steps"]), f"{r['width']:g}", r.get("variant", "base"),
            f"{r['aid_auc']:.3f} [{r['aid_auc_ci_low']:.3f}, {r['aid_auc_ci_high']:.3f}]",
            "n/a" if start is None else f"{start:.3f}",
            "n/a" if r.get("aid_auc_transfer") is None else f"{r['aid_auc_transfer']:.3f}",
            f"{r['kernel_spread']:.3f}", f"{r['pi_shift']:.4f}",
            "n/a" if r.get("final_loss_aid") is None else f"{r['final_loss_aid']:.3f}",
            f"{_cell(r['cells'], 'ssd', 'clean')} / {_cell(r['cells'], 'ssd', 'A_cls')}",
            f"{_cell(r['cells'], 'ssd_at', 'clean')} / {_cell(r['cells'], 'ssd_at', 'A_cls')}",
            f"{_cell(r['cells'], 'robustdet', 'clean')} / {_cell(r['cells'], 'robustdet', 'A_cls')}",
            _diff(r["ssd_at_minus_ssd_A_cls"]), _diff(r["robustdet_minus_ssd_at_A_cls"]),
            _diff(r["robustdet_minus_ssd_at_clean"]), "yes" if r["meets_aim"] else "no"]) + " |")
    return "\n".join(rows)


def chosen(records: list[dict]) -> list[dict]:
    """The base-variant settings that meet the aim at the lowest cost (several when they tie; none if none does)."""
    meeting = [r for r in records if r["meets_aim"] and r.get("variant", "base") == "base"]
    if not meeting:
        return []
    lowest = min(cost(r) for r in meeting)
    return [r for r in meeting if cost(r) == lowest]


def main(argv=None) -> None:
    path = (argv or sys.argv[1:] or [DEFAULT])[0]
    records = load(path)
    print(table(records))
    picks = chosen(records)
    print()
    if not picks:
        print("No setting meets both aims.")
    for pick in picks:
        print(f"Cheapest meeting both aims: ε = {pick['epsilon']:g}, {pick['adversarial_steps']} adversarial steps, "
              f"width {pick['width']:g} (AID AUC {pick['aid_auc']:.3f}, SSD-AT − SSD under A_cls "
              f"{_diff(pick['ssd_at_minus_ssd_A_cls'])}).")
    versions = sorted({r.get("version", "unknown") for r in records})
    machines = sorted({r.get("machine", "unknown") for r in records})
    print(f"Versions: {', '.join(versions)}; machine: {', '.join(machines)}; {len(records)} lines.")


if __name__ == "__main__":
    main()

"""The README documents every configuration key (what ``--helpfull`` cannot show for ``--config.*``)."""

import importlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAGE_BLOCKS = ("robustdet.", "ssd_at.")  # the demo's stage overrides, documented as the keys they override


def _keys(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict) and key != "overrides":
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_every_config_key_is_in_the_readme_table():
    text = ROOT.joinpath("README.md").read_text()
    section = text.split("## Configuration keys", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", section))
    missing = set()
    for path in sorted(ROOT.joinpath("configs").glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        for key in _keys(importlib.import_module(f"configs.{path.stem}").get_config().to_dict()):
            for block in STAGE_BLOCKS:
                key = key[len(block):] if key.startswith(block) else key
            if key not in documented:
                missing.add(f"{key} ({path.name})")
    assert not missing, f"document these keys in README 'Configuration keys': {sorted(missing)}"

"""The documentation stays true: links resolve, every config key is documented (and every documented key exists),
the README's test command is the one CI runs, and the code cites docs/reference.md, not a specification elsewhere.

Light on purpose: it reads Markdown and builds configs, and never trains or evaluates a model.
"""

import ast
import importlib
import pathlib
import re

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *ROOT.joinpath("docs").rglob("*.md")])
CONFIGS = sorted(p.stem for p in ROOT.joinpath("configs").glob("*.py") if p.stem not in ("__init__", "common"))
CONFIGURATION = ROOT / "docs" / "configuration.md"

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
KEY = re.compile(r"`([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)+)`")


def _without_code(text: str, inline: bool = True) -> str:
    text = FENCE.sub("", text)
    return INLINE_CODE.sub("``", text) if inline else text


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its text (links and code unwrapped) lower-cased, punctuation dropped, spaces
    turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(_without_code(path.read_text(encoding="utf-8"), inline=False)):
        slug = github_anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(path: pathlib.Path) -> list[str]:
    text = _without_code(path.read_text(encoding="utf-8"))
    return [target for _, target in LINK.findall(text)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
            broken.append(f"{target} (no such file)")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{target} (no heading with that anchor in {resolved.name})")
    assert not broken, f"{doc.relative_to(ROOT)} links to: {broken}"


def test_github_anchors_drop_punctuation_and_keep_underscores():
    assert github_anchor("Total loss (Eq. 5)") == "total-loss-eq-5"
    assert github_anchor("The VGG16 files `backbone_init` accepts") == "the-vgg16-files-backbone_init-accepts"
    assert github_anchor("Forward pass and NaN guard") == "forward-pass-and-nan-guard"


# -- configuration keys ------------------------------------------------------------------------------------------
def _config(name: str) -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.{name}").get_config()


def leaf_keys(node, prefix: str = ""):
    """Every leaf key path of a config; an empty dict (``eval.overrides`` of the paper configs) is a leaf."""
    for key in node.keys():
        value = node[key]
        if isinstance(value, ml_collections.ConfigDict) and len(value.keys()):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def resolve(config, path: str):
    node = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _table_rows(text: str, header: str):
    """The cells of every row of every table whose header row starts with ``header``."""
    rows, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(header):
            inside = True
            continue
        if inside and re.match(r"^\|[-:| ]+\|$", stripped):
            continue
        if inside and stripped.startswith("|"):
            rows.append([cell.strip() for cell in stripped.strip("|").split(" | ")])
        else:
            inside = False
    return rows


def documented():
    """``(groups, rows)`` of docs/configuration.md: group name → configs, and (keys, group, default) per row."""
    text = _without_code(CONFIGURATION.read_text(encoding="utf-8"), inline=False)
    groups = {re.fullmatch(r"`(\w+)`", cells[0]).group(1): re.findall(r"`(\w+)`", cells[1])
              for cells in _table_rows(text, "| group | configs |")}
    rows = []
    for cells in _table_rows(text, "| key | configs | default | meaning |"):
        keys = KEY.findall(cells[0])
        group = re.fullmatch(r"`(\w+)`", cells[1])
        assert keys and group, f"docs/configuration.md: a key row needs key paths and one group in backticks: {cells}"
        rows.append((keys, group.group(1), cells[2]))
    return groups, rows


def test_configuration_groups_name_the_configs():
    groups, rows = documented()
    assert groups and rows
    assert sorted(groups["all"]) == CONFIGS
    for name, members in groups.items():
        assert set(members) <= set(CONFIGS), f"group {name} names unknown configs {set(members) - set(CONFIGS)}"
    unknown = {group for _, group, _ in rows} - set(groups)
    assert not unknown, f"rows name undefined groups {unknown}"


def test_every_config_key_is_documented_for_its_config():
    groups, rows = documented()
    covered = {(key, config) for keys, group, _ in rows for key in keys for config in groups[group]}
    missing = sorted(f"{key} ({name})" for name in CONFIGS for key in leaf_keys(_config(name))
                     if (key, name) not in covered)
    assert not missing, f"document these keys in docs/configuration.md: {missing}"


def test_every_documented_key_exists_in_every_config_of_its_group():
    groups, rows = documented()
    configs = {name: _config(name) for name in CONFIGS}
    wrong, seen = [], set()
    for keys, group, _ in rows:
        for key in keys:
            assert key not in seen, f"{key} has two rows in docs/configuration.md"
            seen.add(key)
            for name in groups[group]:
                try:
                    resolve(configs[name], key)
                except KeyError:
                    wrong.append(f"{key} ({name})")
    assert not wrong, f"docs/configuration.md documents keys these configs do not accept: {wrong}"


def _plain(value):
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def test_single_documented_defaults_are_the_configs_values():
    """A default given as one literal (not a per-config list or words) is every config's value of that key."""
    groups, rows = documented()
    configs = {name: _config(name) for name in CONFIGS}
    wrong = []
    for keys, group, default in rows:
        literal = re.fullmatch(r"`([^`]*)`", default)
        if len(keys) != 1 or not literal:
            continue
        try:
            expected = _plain(ast.literal_eval(literal.group(1)))
        except (ValueError, SyntaxError):
            expected = literal.group(1)  # a string written without quotes
        for name in groups[group]:
            actual = _plain(resolve(configs[name], keys[0]))
            if actual != expected:
                wrong.append(f"{keys[0]} ({name}): documented {expected!r}, config {actual!r}")
    assert not wrong, f"docs/configuration.md defaults differ from the configs: {wrong}"


# -- the README ------------------------------------------------------------------------------------------------
def _commands(lines) -> list[str]:
    return [part.strip() for line in lines for part in line.split("&&") if part.strip()]


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = [line for line in ROOT.joinpath(".ci", "run").read_text().splitlines()
          if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(ci) == 1, ci
    wanted = _commands(ci)
    readme = ROOT.joinpath("README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme, re.M | re.S)
    found = [_commands(line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#"))
             for block in blocks]
    assert wanted in found, f"the README shows none of its code blocks as CI's command {wanted}"


def test_the_readme_is_short_and_without_history():
    text = ROOT.joinpath("README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    hashes = re.findall(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", text)
    assert not hashes, f"commit hashes belong to CHANGELOG.md and the results pages: {hashes}"
    for phrase in ("has since", "before commit", "at commit"):
        assert phrase not in text, phrase


# -- citations -------------------------------------------------------------------------------------------------
def test_the_code_cites_docs_reference_not_an_outside_spec():
    stale = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("robustdet_tf", "configs", "tests", "bench")
             for path in sorted(ROOT.joinpath(folder).rglob("*.py")) if path.name != "test_docs.py"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "spec §" in line]
    assert not stale, f"cite docs/reference.md#<section> instead of 'spec §': {stale}"


def test_cited_reference_sections_exist():
    sections = anchors(ROOT / "docs" / "reference.md")
    cited = {(path.relative_to(ROOT), anchor)
             for folder in ("robustdet_tf", "configs", "tests", "bench") for path in ROOT.joinpath(folder).rglob("*.py")
             for anchor in re.findall(r"docs/reference\.md#([\w-]+)", path.read_text(encoding="utf-8"))}
    missing = sorted(f"{path}: #{anchor}" for path, anchor in cited if anchor not in sections)
    assert not missing, f"no such section in docs/reference.md: {missing}"


# -- what the documentation tells users to type ----------------------------------------------------------------
def test_eval_overrides_as_a_whole_dictionary_reach_the_protocol():
    """docs/configuration.md: the paper configs take ``--config.eval.overrides='{...}'`` (their dictionary is empty,
    so dotted keys are unknown there), and make_protocol accepts what evaluation.md shows."""
    from absl import flags
    from ml_collections import config_flags

    from robustdet_tf.evaluation.table_spec import TableSpec

    def parse(override: str):  # as main.py parses its command line
        path = str(ROOT / "configs" / "robustdet_voc.py")
        argv = ["main.py", f"--config={path}", override]
        flag_values = flags.FlagValues()
        holder = config_flags.DEFINE_config_file("config", path, flag_values=flag_values, lock_config=True,
                                                 sys_argv=argv)
        flag_values(argv)
        return holder.value

    overrides = '{"pgd": {"steps": 5, "restarts": 4, "step_schedule": "apgd"}, "dag": {"steps": 10}}'
    protocol = TableSpec.from_config(parse(f"--config.eval.overrides={overrides}").eval).resolved_protocol()
    assert (protocol["pgd"]["steps"], protocol["pgd"]["restarts"], protocol["dag"]["steps"]) == (5, 4, 10)
    assert protocol["pgd"]["epsilon"] == 8.0  # the rest of the reference protocol stays
    with pytest.raises((KeyError, AttributeError)):
        parse("--config.eval.overrides.pgd.steps=2")

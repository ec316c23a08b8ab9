"""The package's rooms import one way only (docs/architecture.md): no circles, nothing running back up."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "robustdet_tf"

# Rank of each room; a module may import only rooms of a lower or equal rank, and equal ranks only without circles.
RANKS = {
    "boxes": 0, "priors": 0, "io": 0, "detections": 0, "labels": 0, "distribution": 0, "compiled": 0, "behaviour": 0,
    "layers": 1, "losses": 1, "metrics": 1,
    "attacks": 2,
    "models": 3,
    "data": 4,
    "evaluation": 5, "export": 5, "checkpoints": 5, "importers": 5, "analysis": 5, "interop": 5, "run_report": 5,
    "workdir": 5, "initial_model": 5,
    "train": 6,
    "demo": 7,
    "cli": 8,
}


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports() -> dict[str, set[str]]:
    """Module name → the robustdet_tf modules it imports (top level or inside functions)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robustdet_tf"):
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("robustdet_tf"))
        graph[name] = targets
    return {m: {t for t in ts if t in graph} for m, ts in graph.items()}


GRAPH = _imports()


def test_every_room_is_ranked():
    rooms = {_room(m) for m in GRAPH if m != "robustdet_tf"}
    assert rooms <= set(RANKS), f"rank the new room(s) {rooms - set(RANKS)} in RANKS and docs/architecture.md"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "robustdet_tf"))
def test_no_import_runs_back_up(module):
    upward = [t for t in GRAPH[module] if t != "robustdet_tf" and RANKS[_room(t)] > RANKS[_room(module)]]
    assert not upward, f"{module} imports {upward}, a room above it"


def test_no_import_circles():
    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for target in GRAPH[module]:
            if target in ("robustdet_tf", module) or target.startswith(module + "."):
                continue  # a package importing its own submodules is not a circle
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])

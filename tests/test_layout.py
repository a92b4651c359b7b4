"""Data flows one way: no module imports from a floor above its own, and no import cycle (a static check of every import).

Imports under `if TYPE_CHECKING:` are not counted (they never run); imports inside functions are: a lazy import
is still a dependency. A module's floor is that of the longest prefix of its name in FLOORS.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iapas"

# module prefix -> floor; a module may import from its own floor and those below
FLOORS = {
    # 0: the core every part shares
    "iapas.errors": 0, "iapas.registry": 0, "iapas.folders": 0, "iapas.config": 0, "iapas.types": 0, "iapas.files": 0,
    "iapas.device": 0, "iapas.vocabulary": 0, "iapas.calibration": 0, "iapas.images": 0,
    # 1: building blocks that know no model: the weights manifest and downloads, precision and quantisation, drawing,
    # datasets, the prompt-learning pieces, and two name/text tables the layers above share
    "iapas.weights": 1, "iapas.acceleration": 1, "iapas.visualization": 1, "iapas.data": 1,
    "iapas.methods.families": 1, "iapas.methods.iapas.prompting": 1,
    "iapas.evaluation.metrics": 1,  # arithmetic on arrays: methods (AdaCLIP's keep-best) and decisions measure with it
    # 2: the models (one module per family) and the stages that run them; the CLIP pixels the CLIP backend reads
    "iapas.backends": 2, "iapas.stages": 2, "iapas.prompt_learning.vision": 2,
    # 3: runs (batching, claims, outputs, fingerprints), the models iapas builds itself, exported runtimes
    "iapas.runs": 3, "iapas.acceleration.runtimes": 3,
    "iapas.decisions": 3,  # thresholds, verdicts, masks and regions: what a run writes beside each map
    # 4: the methods, one folder each, what the learned ones share (prompt learning, its training loop and its
    # checkpoints in the authors' layouts), and the demo and random-full models iapas builds of them
    "iapas.methods": 4, "iapas.prompt_learning": 4, "iapas.weights.official": 4, "iapas.weights.demo": 4,
    "iapas.weights.random_full": 4,
    # 5: what runs methods: evaluation, the papers' tables, benchmarks, engines
    "iapas.evaluation": 5, "iapas.reproduce": 5, "iapas.bench": 5, "iapas.engines": 5,
    # 6: the surfaces
    "iapas.cli": 6, "iapas.webapp": 6, "iapas.__main__": 6,
    # the package's face: statically it holds only __version__ (its public names load on first use, by importlib)
    "iapas": 0,
}


def module_names() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package's __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imports(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (statically; TYPE_CHECKING blocks left out)."""
    edges: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(node) for block in ast.walk(tree)
                       if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                       for node in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    module = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and target.startswith("iapas"):
                    edges.setdefault(name, set()).add(target)
    return edges


def floor(module: str) -> int:
    prefixes = [prefix for prefix in FLOORS if module == prefix or module.startswith(prefix + ".")]
    assert prefixes, f"{module} has no floor: add its package to FLOORS in tests/test_layout.py"
    return FLOORS[max(prefixes, key=len)]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_from_a_floor_above_its_own():
    modules = module_names()
    edges = imports(modules)
    upward = sorted(f"{source} (floor {floor(source)}) imports {target} (floor {floor(target)})"
                    for source, targets in edges.items() for target in targets
                    if floor(target) > floor(source))
    assert upward == []


def test_no_import_cycles():
    assert cycles(imports(module_names())) == []


def test_the_checks_see_what_they_must():
    """The checker itself: relative imports resolve, TYPE_CHECKING is skipped, a cycle is found."""
    edges = imports(module_names())
    assert "iapas.methods.anomalyclip.model" in edges["iapas.methods.anomalyclip.train"]
    assert "iapas.methods.anomalyclip.train" not in edges.get("iapas.methods.anomalyclip.model", set())  # the model never imports its trainer
    assert "iapas.backends.clip" in edges["iapas.methods.adaclip.model"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor("iapas.weights.demo") == 4 and floor("iapas.weights.manifest") == 1

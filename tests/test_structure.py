"""The package's shape: layers import downward only, and configs never pay for TensorFlow."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kerascnn"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> kerascnn modules it imports anywhere in its text (inside functions too).

    The facade `kerascnn/__init__.py` may import everything, and a package's `__init__` re-exporting its
    children is not a dependency of the children, so neither counts as an edge.
    """
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = resolve(name) if name.startswith("kerascnn") else None
                parent_facade = target is not None and module.startswith(target + ".") and files[target].name == "__init__.py"
                if target and target not in (module, "kerascnn") and not parent_facade:
                    targets.add(target)
        graph[module] = targets
    graph.pop("kerascnn")
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_its_way_back_to_itself():
    graph = import_graph()
    assert len(graph) > 30 and sum(map(len, graph.values())) > 80  # the parser found the package's imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["kerascnn.config"] = graph["kerascnn.config"] | {"kerascnn.runner"}  # config -> runner -> ... -> config
    assert any({"kerascnn.config", "kerascnn.runner"} <= set(component) for component in cycles(graph))


def test_the_floor_imports_nothing_above_it():
    graph = import_graph()
    assert graph["kerascnn.errors"] == set()
    assert graph["kerascnn.config"] <= {"kerascnn.errors"}
    assert graph["kerascnn.rundir"] <= {"kerascnn.config", "kerascnn.errors"}


CONFIG_WITHOUT_TENSORFLOW = """
import sys
from kerascnn.config import RunConfig, config_from_dict, config_reference, load_config
path = sys.argv[1]
configs = [RunConfig(), load_config(preset="fashion_mnist"), load_config(preset="digits", overrides=[
    "train.epochs=3", "model.options.filters=[8, 16]", "model.backbone='mobilenet_v2'",
    "model.transfer='fine_tune'", "model.name='cnn'"])]
open(path, "w").write(configs[-1].to_toml())
configs.append(load_config(path, overrides=["train.batch_size=8"]))
assert config_from_dict(configs[-1].to_dict()) == configs[-1]
assert configs[-1].model.backbone == "mobilenet_v2" and configs[-1].train.batch_size == 8
config_reference()
heavy = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
print("heavy:", heavy)
"""


def test_building_validating_and_writing_configs_imports_no_tensorflow(tmp_path):
    result = subprocess.run([sys.executable, "-c", CONFIG_WITHOUT_TENSORFLOW, str(tmp_path / "run.toml")],
                            capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "heavy: []"

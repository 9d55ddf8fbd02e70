"""The package's shape: no import cycles (function-level imports included), between modules or
between subpackages, and no two modules with the same file name.

Imports are read with ``ast``, so an import inside a function or under ``TYPE_CHECKING`` counts
as much as one at the top: each is a dependency a reader must follow.
"""
import ast
import collections
import os
import re
from typing import Dict, List, Set

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PACKAGE = "e3va_d2"


def modules(root: str = ROOT, package: str = PACKAGE) -> Dict[str, str]:
    """Dotted module name -> file, every ``.py`` of ``package`` (packages as their name)."""
    found = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = (
                    os.path.join(folder, name))
    return found


def imports(module: str, path: str, known: Set[str]) -> Set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its file. ``from pkg import
    name`` depends on ``pkg.name`` when that is a module, else on ``pkg``."""
    is_package = path.endswith("__init__.py")
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                elif target in known:
                    found.add(target)
    found.discard(module)
    return found


def import_graph() -> Dict[str, Set[str]]:
    found = modules()
    return {m: imports(m, path, set(found)) for m, path in found.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph.get(node, ()):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                child = stack.pop()
                on_stack.discard(child)
                component.append(child)
                if child == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def subpackage(module: str) -> str:
    """``e3va_d2.modeling.tuning.e3va`` -> ``e3va_d2.modeling``."""
    return ".".join(module.split(".")[:2])


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_inside_functions(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from .a import f\n")
    found = modules(str(tmp_path), "pkg")
    assert imports("pkg.a", found["pkg.a"], set(found)) == {"pkg.b"}
    assert imports("pkg.b", found["pkg.b"], set(found)) == {"pkg.a"}


def test_no_import_cycles_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycles_between_subpackages():
    graph = collections.defaultdict(set)
    for module, targets in import_graph().items():
        if module == PACKAGE:  # the package's __init__ imports what it re-exports
            continue
        for target in targets:
            if subpackage(target) != subpackage(module):
                graph[subpackage(module)].add(subpackage(target))
    assert cycles(dict(graph)) == []


def imports_of_projects(path: str) -> List[str]:
    """The imports of ``projects`` (or any module under it) anywhere in the file at ``path``."""
    found = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "projects"]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] == "projects":
                found.append(node.module)
    return found


def test_the_library_never_imports_the_lab(tmp_path):
    """``e3va_d2`` is what a user imports; ``projects/`` (benchmarks, studies, pre-training)
    builds on it, never the other way: a user's install has no ``projects``."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from projects.benchmark import measure\nimport projects\n")
    assert sorted(imports_of_projects(str(probe))) == ["projects", "projects.benchmark"]
    found = {module: imports_of_projects(path) for module, path in modules().items()}
    assert {m: names for m, names in found.items() if names} == {}


def test_no_two_modules_share_a_file_name():
    names = collections.defaultdict(list)
    for folder in (PACKAGE, "projects"):
        for path, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py") and name != "__init__.py":
                    names[name].append(os.path.relpath(os.path.join(path, name), ROOT))
    assert {n: paths for n, paths in names.items() if len(paths) > 1} == {}


def _file_map() -> str:
    """The second code block of docs/DEVELOPING.md's "The package": one line per module."""
    with open(os.path.join(ROOT, "docs", "DEVELOPING.md")) as f:
        section = f.read().split("## The package", 1)[1].split("\n## ", 1)[0]
    return section.split("```")[3]


def test_package_map_names_every_module_and_only_files_that_exist():
    """Each module of the package by its path (``engine/step.py``) or its folder's line
    (``data/``), each script of projects/ by file name, and nothing that is not there."""
    text = _file_map()
    paths = set(re.findall(r"[\w./]+\.py\b", text))
    folders = set(re.findall(r"^ *([\w/]+/) ", text, flags=re.M))
    unmapped = []
    for path in modules().values():
        relative = os.path.relpath(path, os.path.join(ROOT, PACKAGE)).replace(os.sep, "/")
        if not relative.endswith("__init__.py") and relative not in paths and not any(
                relative.startswith(folder) for folder in folders):
            unmapped.append(relative)
    scripts = {name: os.path.join(folder, name)
               for folder, _, names in os.walk(os.path.join(ROOT, "projects"))
               for name in names if name.endswith(".py") and name != "__init__.py"}
    unmapped += [name for name in scripts if name not in text]
    assert unmapped == [], "add these to docs/DEVELOPING.md's package map"
    nowhere = [p for p in paths if p not in scripts and not any(
        os.path.isfile(os.path.join(ROOT, base, folder, p))
        for base in (PACKAGE, "") for folder in folders | {""})]
    assert nowhere == [], "docs/DEVELOPING.md's package map names files that do not exist"


def test_a_script_defines_everything_before_it_runs():
    """``if __name__ == "__main__"`` is a script's last statement: a function defined below it
    does not exist yet when ``python -m`` runs the script, although an import of the module (as
    in the tests) finds it (``highway_time --record`` failed so: its ``render`` came after)."""
    late = []
    for package in (PACKAGE, "projects"):
        for module, path in modules(ROOT, package).items():
            body = ast.parse(open(path).read(), path).body
            mains = [i for i, node in enumerate(body) if isinstance(node, ast.If)
                     and "__main__" in ast.unparse(node.test)]
            if mains and mains[-1] != len(body) - 1:
                late.append(module)
    assert not late, f"statements after `if __name__ == '__main__'` in {late}"

"""The package's shape, read with `ast` (nothing imported): every clipeval import names a module and a name
that exist, no module imports another's private name, the imports between modules form no cycle, and every
subpackage says in its docstring what it holds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipeval"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
SOURCES = {
    **{m: p for m, p in MODULES.items()},
    **{f"pages.{p.stem}": p for p in (ROOT / "pages").glob("*.py")},
    "app": ROOT / "app.py",
}


def defined_names(module: str) -> set[str]:
    """Top-level names a module binds (assignments, defs, classes, imports), plus its submodules."""
    tree = ast.parse(MODULES[module].read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node in tree.body:
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and node in tree.body:
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)) and node in tree.body:
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.Assign):
                    names.update(n.id for t in sub.targets for n in ast.walk(t) if isinstance(n, ast.Name))
                elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                    names.update((a.asname or a.name).split(".")[0] for a in sub.names)
    names.update(m.rsplit(".", 1)[1] for m in MODULES if "." in m and m.rsplit(".", 1)[0] == module)
    return names


def clipeval_imports(path: Path):
    """(line, module imported from, name or None) for every clipeval import in a file, inside functions too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "clipeval":
            for a in node.names:
                yield node.lineno, node.module, a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "clipeval":
                    yield node.lineno, a.name, None


def edges() -> dict[str, set[str]]:
    """Module -> the clipeval modules it imports (a name that is a submodule counts as that module)."""
    out: dict[str, set[str]] = {m: set() for m in SOURCES}
    for m, path in SOURCES.items():
        for _, module, name in clipeval_imports(path):
            target = f"{module}.{name}" if name and f"{module}.{name}" in MODULES else module
            if target != m:
                out[m].add(target)
    return out


def test_every_clipeval_import_resolves():
    wrong = []
    for _m, path in SOURCES.items():
        for line, module, name in clipeval_imports(path):
            if module not in MODULES:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: no module {module}")
            elif name and name != "*" and name not in defined_names(module):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} has no {name}")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_name():
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module}.{name}"
        for m, path in SOURCES.items()
        for line, module, name in clipeval_imports(path)
        if name and name.startswith("_")
    ]
    assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_imports_form_no_cycle():
    # a package's __init__ that re-exports its modules is the package's face, not a module of its own
    graph = {
        m: {d for d in ds if not (d in MODULES and MODULES[d].name == "__init__.py" and m.startswith(d + "."))}
        for m, ds in edges().items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", sorted(p.parent.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py")))
def test_every_subpackage_says_what_it_holds(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 12, f"{package}/__init__.py needs a docstring saying what the package holds"


def function_level_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    top = {id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try)) for n in ast.walk(node)}
    top |= {id(n) for n in tree.body}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top]


def test_imports_sit_at_the_top_unless_the_module_says_why():
    """An import inside a function is for a heavy or optional package (torch in a CLI that only lists runs,
    ray, transformers); a module that does this says so once, in a comment starting with the words below."""
    wrong = [
        f"{path.relative_to(ROOT)}:{lines[0]}"
        for path in MODULES.values()
        if (lines := function_level_imports(path))
        and "# Imported inside the functions that use them:" not in path.read_text()
    ]
    assert not wrong, "imports inside functions without a word on why: " + ", ".join(wrong)


def test_shares_intervals_and_stored_cells_read_one_way():
    from clipeval.formats import bracket, json_cell, percent, text_cell

    assert percent(0.1234) == "12.3%" and percent(0.5, 0) == "50%" and percent(float("nan")) == "n/a"
    assert percent(None, none="–") == "–"
    assert bracket(0.1, 0.25) == "[0.10, 0.25]" and bracket(0.0012345, 0.5, ".4g") == "[0.001234, 0.5]"
    assert json_cell('{"a": 1}') == {"a": 1} and json_cell(None) == {} and json_cell(float("nan")) == {}
    assert text_cell("x") == "x" and text_cell(float("nan"), "-") == "-"


def test_every_attribute_of_an_imported_clipeval_module_exists():
    """`widgets.loads(...)` on a module that no longer has `loads` imports fine and fails only when the line
    runs: every `module.name` where `module` is an imported clipeval module must name something it binds."""
    wrong = []
    for path in SOURCES.values():
        tree = ast.parse(path.read_text())
        modules = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("clipeval"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        modules[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in MODULES:
                        modules[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                module = modules[node.value.id]
                if not node.attr.startswith("__") and node.attr not in defined_names(module):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module} has no {node.attr}")
                elif node.attr.startswith("_") and not node.attr.startswith("__"):
                    # `data._read(...)` is an import of a private name by another route
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module}.{node.attr} is private to it")
    assert not wrong, "\n".join(wrong)


def test_the_command_line_parser_loads_no_torch():
    """`clipeval runs` and `--help` build the whole parser: it must not import torch (seconds), so the options'
    defaults (devices, dtypes, batch sizes) live in clipeval.config."""
    code = "import sys; from clipeval.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False", out.stderr

"""The package's structure: variation behind registries, short functions, no private names across modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeclin"
SOURCES = sorted(PACKAGE.rglob("*.py"))
# what a task-type branch looks like: a comparison with a task name, or a guess from a class name / label type
TASK_BRANCH = re.compile(r"task\s*[!=]=|[!=]=\s*(TOKEN|MULTI_LABEL|SINGLE_LABEL)\b|(?<!for )\btask\s+(not\s+)?in\s+\(|"
                         r"endswith\(\"For(Token|Sequence)Classification|isinstance\(labels\[0\]")
MAX_FUNCTION_LINES = 80


def _relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_no_module_outside_the_task_strategies_branches_on_the_task():
    found = [f"{_relative(p)}:{n}: {line.strip()}" for p in SOURCES if "tasks" not in p.parts
             for n, line in enumerate(p.read_text().splitlines(), 1) if TASK_BRANCH.search(line)]
    assert not found, "\n".join(found)


def test_the_branch_pattern_catches_what_it_should():
    for line in ('if task == "token_classification":', "if dataset.task == TOKEN:", "x = y != MULTI_LABEL",
                 'if task in ("dia", "pro"):', 'if name.endswith("ForTokenClassification"):'):
        assert TASK_BRANCH.search(line), line
    for line in ("task = get_task(run.task)", "TASKS = {task.name: task for task in (A(), B())}"):
        assert not TASK_BRANCH.search(line), line


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{_relative(path)}:{node.lineno} {node.name}: {length} lines")
    assert not long, "\n".join(long)


def _imported_modules(tree: ast.Module) -> dict[str, str]:
    """Local name -> edgeclin module, for ``import edgeclin.x as y`` and ``from edgeclin import x``."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("edgeclin")})
        elif isinstance(node, ast.ImportFrom) and node.module == "edgeclin":
            names.update({a.asname or a.name: f"edgeclin.{a.name}" for a in node.names})
    return names


def test_no_module_uses_another_modules_private_names():
    crossings = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        modules = _imported_modules(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeclin"):
                crossings += [f"{_relative(path)}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                crossings.append(f"{_relative(path)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not crossings, "\n".join(crossings)


def test_no_module_sets_attributes_on_objects_it_did_not_make():
    """No ``model.edgeclin_*`` side channels: what a loader learns, it returns."""
    found = [f"{_relative(p)}:{n}" for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bmodel\.(edgeclin_\w+|path|manifest)\s*=", line)]
    assert not found, found


def test_fixture_writers_are_not_installed():
    assert not (PACKAGE / "builders" / "fixtures.py").exists()

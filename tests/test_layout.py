"""The package's layout holds: the library core imports no application module, and the
task-free application modules name no task (issue 19)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mombs
from mombs.recipes import RECIPES

PACKAGE = Path(mombs.__file__).parent

#: The part a user's own loop imports.
CORE = [
    "__init__.py",
    "_atomic.py",
    "_checks.py",
    "planner.py",
    "sampler.py",
    "difficulty.py",
    "noise.py",
    "schedule.py",
    "assessor.py",
    "assessment.py",
    "plots.py",
    "data",
    "tasks",
    "strategies",
    "quality",
    "integrations",
]
#: The application's task-free modules: they ask the task's recipe and never name a task.
TASK_FREE = ["train", "compare.py", "report.py", "cli.py", "diagnose.py"]
#: What the core must not import.
APPLICATION = ("mombs.recipes", "mombs.train", "mombs.compare", "mombs.report", "mombs.cli", "mombs.diagnose")


def _files(names) -> list[Path]:
    out = []
    for name in names:
        p = PACKAGE / name
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, at any depth of the file."""
    tree = ast.parse(path.read_text())
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            found.add(stem)
            found.update(f"{stem}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("path", _files(CORE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_core_imports_nothing_from_the_recipes_or_the_runner(path):
    bad = sorted(m for m in _imports(path) if m.startswith(APPLICATION))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def _non_docstring_strings(tree) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


@pytest.mark.parametrize("path", _files(TASK_FREE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_task_free_modules_name_no_task(path):
    names = re.compile(r"\b(" + "|".join(map(re.escape, RECIPES)) + r")\b")
    tree = ast.parse(path.read_text())
    said = [(n.lineno, n.value) for n in _non_docstring_strings(tree) if names.search(n.value)]
    assert not said, f"{path.relative_to(PACKAGE)} names a task in {said}"
    # Nor by the names the task branches once went by.
    words = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not words & {"seg", "det", "classification", "segmentation", "detection"}, path


def test_every_recipe_is_one_folder_and_registered():
    for task, module in RECIPES.items():
        assert module == f"mombs.recipes.{task}" and (PACKAGE / "recipes" / task / "__init__.py").is_file()
    assert not (PACKAGE / "models").exists() and not (PACKAGE / "metrics").exists()
    assert sorted(p.name for p in (PACKAGE / "data").glob("*.py")) == ["__init__.py", "indexed.py"]


def test_no_two_public_classes_share_a_name():
    import importlib
    import inspect
    import pkgutil

    owners: dict[str, set] = {}
    for info in pkgutil.walk_packages(mombs.__path__, "mombs."):
        if info.name.startswith(("mombs.integrations.",)):
            continue  # their frameworks are optional; read below without importing them
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and not name.startswith("_") and obj.__module__ == info.name:
                owners.setdefault(name, set()).add(info.name)
    for path in _files(["integrations"]):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                owners.setdefault(node.name, set()).add(_module(path))
    shared = {k: sorted(v) for k, v in owners.items() if len(v) > 1}
    assert not shared, shared

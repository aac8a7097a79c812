"""Packaging: the version has one source, every extra installs what its code
imports, a missing extra is one line naming it, and (``make wheel-check``) the
built wheel installs into a new virtual environment and runs from outside the
checkout.

The wheel check is skipped unless ``MOMBS_WHEEL_CHECK=1`` (``make wheel-check``,
which ``.ci/run`` calls): it builds, so it stays out of quick test runs.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import mombs
from mombs import _extras

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
CORE = {"numpy", "torch"}

#: Which extra a module's optional imports come from: the first matching path
#: prefix wins. The application (command line, runner, classification recipe)
#: is the ``cli`` extra; a task's recipe and adapter are its task's extra.
EXTRA_OF_PATH = [
    ("mombs/integrations/lightning.py", "lightning"),
    ("mombs/integrations/transformers.py", "transformers"),
    ("mombs/quality/", "quality"),
    ("mombs/recipes/segmentation/", "seg"),
    ("mombs/tasks/segmentation.py", "seg"),
    ("mombs/recipes/detection/", "det"),
    ("mombs/tasks/detection.py", "det"),
    ("mombs/recipes/classification/folder.py", "vision"),
    ("mombs/recipes/classification/torchvision_models.py", "vision"),
    ("mombs/plots.py", "viz"),
    ("mombs/", "cli"),
]
#: Pictures are optional wherever they are drawn: a run without matplotlib skips them.
EXTRA_ANYWHERE = {"matplotlib": "viz"}

#: Messages that do not yet name an extra; a fix only shrinks this set (empty: every one names it).
KNOWN_UNNAMED: set = set()

_HINT = re.compile(r"pip install 'mombs\[([a-z]+)\]'")


def _requirement_names(extra: str) -> set[str]:
    """The distributions ``extra`` installs, with ``mombs[other]`` expanded to ``other``'s."""
    names = set()
    for req in EXTRAS[extra]:
        name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()
        if name == "mombs":
            for other in re.search(r"\[(.*)\]", req).group(1).split(","):
                names |= _requirement_names(other.strip())
        else:
            names.add(name)
    return names


def _distribution(module: str) -> str:
    return _extras.DISTRIBUTION_OF_MODULE.get(module, module).lower()


def _sources():
    for path in sorted((ROOT / "mombs").rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _third_party(node) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
    else:
        return []
    tops = {n.split(".")[0] for n in names}
    return sorted(t for t in tops if t not in sys.stdlib_module_names and t != "mombs" and t not in CORE)


def _extra_of(rel: str, module: str) -> str:
    if module in EXTRA_ANYWHERE:
        return EXTRA_ANYWHERE[module]
    return next(extra for prefix, extra in EXTRA_OF_PATH if rel.startswith(prefix))


def test_version_comes_from_the_metadata_and_matches_pyproject():
    assert mombs.__version__ == PYPROJECT["project"]["version"]


def test_py_typed_ships():
    assert (ROOT / "mombs" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["mombs"]


def test_every_extra_named_here_exists():
    named = {extra for _, extra in EXTRA_OF_PATH} | set(EXTRA_ANYWHERE.values()) | set(_extras.EXTRA_OF_MODULE.values())
    assert named <= set(EXTRAS), sorted(named - set(EXTRAS))


def test_each_extra_installs_what_its_modules_import():
    missing = []
    for rel, tree in _sources():
        for node in ast.walk(tree):
            for module in _third_party(node):
                extra = _extra_of(rel, module)
                if _distribution(module) not in _requirement_names(extra):
                    missing.append(f"{rel}:{node.lineno} imports {module}, not in [{extra}] {EXTRAS[extra]}")
    assert not missing, "\n".join(missing)


def test_the_extra_named_for_each_module_installs_it():
    wrong = {m: e for m, e in _extras.EXTRA_OF_MODULE.items() if _distribution(m) not in _requirement_names(e)}
    assert not wrong, wrong


@pytest.mark.parametrize("extra", ["test", "dev"])
def test_test_and_dev_install_every_extra(extra):
    wide = _requirement_names(extra)
    assert {"pytest", "pytest-xdist"} <= wide
    lacking = {e: sorted(_requirement_names(e) - wide) for e in EXTRAS if e not in ("test", "dev")}
    assert not any(lacking.values()), lacking


def test_dev_adds_the_tools_of_lint_docs_and_the_wheel_check():
    assert _requirement_names("dev") - _requirement_names("test") == {
        "build",
        "twine",
        "mkdocs",
        "mkdocs-material",
        "mkdocstrings",
        "ruff",
        "mypy",
    }


def _message(node) -> str:
    """The constant text of a ``raise ImportError(...)`` message (f-string holes dropped)."""
    if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
        return ""
    parts = []
    for arg in node.exc.args:
        for sub in ast.walk(arg):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                parts.append(sub.value)
    return "".join(parts)


def _guarded_imports():
    """``(file, module, message)`` for every ``try: import X / except ImportError: raise ImportError(msg)``."""
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            modules = sorted({m for stmt in node.body for m in _third_party(stmt)})
            for handler in node.handlers:
                raises = [_message(n) for n in ast.walk(handler) if isinstance(n, ast.Raise)]
                for module in modules:
                    for text in raises:
                        if text:
                            yield rel, module, text


def test_a_missing_extra_says_which_to_install():
    found = list(_guarded_imports())
    assert len(found) >= 8, found  # the scan sees the guarded imports
    unnamed, wrong = set(), []
    for rel, module, text in found:
        hints = _HINT.findall(text)
        if not hints:
            unnamed.add((rel, module))
        elif not any(_distribution(module) in _requirement_names(h) for h in hints):
            wrong.append(f"{rel}: {module} is not in the extra named by {text!r}")
        assert "\n" not in text, f"{rel}: the message for a missing {module} is not one line"
    assert not wrong, wrong
    assert unnamed <= KNOWN_UNNAMED, sorted(unnamed - KNOWN_UNNAMED)


def _run(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


_BLOCKED = "import sys; sys.modules[{!r}] = None; "


def test_the_command_without_yaml_names_the_cli_extra():
    proc = _run(
        _BLOCKED.format("yaml") + "from mombs.__main__ import main; sys.exit(main(sys.argv[1:]))",
        "train",
        "--set",
        "epochs=1",
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["mombs: mombs needs pyyaml: pip install 'mombs[cli]'"], proc.stderr


def test_a_run_without_scikit_learn_names_the_cli_extra(tmp_path):
    proc = _run(
        _BLOCKED.format("sklearn") + "from mombs.__main__ import main; sys.exit(main(sys.argv[1:]))",
        "train",
        "--set",
        "dataset=digits",
        "--set",
        "epochs=1",
        "--out",
        str(tmp_path),
        "--no-progress",
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "mombs: this run needs scikit-learn: pip install 'mombs[cli]'", (
        proc.stderr
    )


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("mombs.integrations.lightning", "lightning", "lightning"),
        ("mombs.integrations.transformers", "transformers", "transformers"),
    ],
)
def test_an_integration_without_its_framework_names_its_extra(module, blocked, extra, monkeypatch):
    # In this process (a new one costs a torch import): the framework is made unimportable and the
    # integration is imported afresh; monkeypatch puts both sys.modules entries back afterwards.
    monkeypatch.setitem(sys.modules, blocked, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError) as err:
        importlib.import_module(module)
    assert len(str(err.value).splitlines()) == 1
    assert f"pip install 'mombs[{extra}]'" in str(err.value), err.value


def test_missing_extra_leaves_unknown_modules_alone():
    err = ModuleNotFoundError("No module named 'nothing_of_ours'", name="nothing_of_ours")
    assert _extras.missing_extra(err) is None
    err = ModuleNotFoundError("No module named 'monai.networks'", name="monai.networks")
    assert _extras.missing_extra(err, "x") == "x needs monai: pip install 'mombs[seg]'"


# ---- make wheel-check: the built wheel, installed outside the checkout ------------------------

wheel_check = pytest.mark.skipif(
    os.environ.get("MOMBS_WHEEL_CHECK") != "1", reason="builds the wheel: `make wheel-check` (MOMBS_WHEEL_CHECK=1)"
)


def _check(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (setuptools) is in the dev environment already; an isolated
    # build would fetch it again for every check
    _check([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    return out


@wheel_check
def test_twine_accepts_the_wheel_and_the_sdist(dist):
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    _check([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)])


@wheel_check
def test_the_wheel_holds_the_package_and_no_more(dist):
    names = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
    for needed in (
        "mombs/py.typed",
        "mombs/__main__.py",
        "mombs/_extras.py",
        "mombs/cli.py",
        "mombs/recipes/classification/training.py",
        "mombs/integrations/lightning.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "configs/"))]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mombs = mombs.__main__:main" in zipfile.ZipFile(next(dist.glob("*.whl"))).read(entry).decode()


@wheel_check
def test_the_sdist_holds_the_configs_examples_and_tests(dist):
    with tarfile.open(next(dist.glob("*.tar.gz"))) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "mombs/py.typed",
        "configs/demo.yaml",
        "configs/seg_demo.yaml",
        "configs/det_demo.yaml",
        "examples/plain_loop.py",
        "tests/test_packaging.py",
        "docs/getting-started.md",
        "mkdocs.yml",
    ):
        assert needed in names, needed
    study = {p.relative_to(ROOT).as_posix() for p in (ROOT / "configs" / "study").glob("*.yaml")}
    assert study and study <= names, sorted(study - names)


@wheel_check
def test_the_wheel_runs_in_a_new_environment_outside_the_checkout(dist, tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py, mombs_cmd = venv / "bin" / "python", venv / "bin" / "mombs"
    # The wheel alone (no dependencies): torch and the rest are seen through a .pth file naming this
    # environment's site-packages, which goes after the new environment's own on sys.path. Its .pth
    # files (the checkout's editable mombs among them) are not run, so only the wheel's mombs is seen.
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(next(dist.glob("*.whl"))),
        ]
    )
    site = Path(_check([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_mombs_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    where = _check(
        [
            str(py),
            "-c",
            "import mombs, importlib.resources as r; print(mombs.__file__); "
            "print(mombs.__version__); print(r.files('mombs').joinpath('py.typed').is_file())",
        ],
        cwd=work,
        env=env,
    ).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(venv.resolve()), where
    assert where[1:] == [PYPROJECT["project"]["version"], "True"], where

    assert "{train,compare,diagnose}" in _check([str(mombs_cmd), "--help"], cwd=work, env=env).stdout
    assert "{train,compare,diagnose}" in _check([str(py), "-m", "mombs", "--help"], cwd=work, env=env).stdout
    # a one-epoch digits run, with the demo config (documented as separate from the wheel: its path given)
    run = _check(
        [
            str(mombs_cmd),
            "train",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--set",
            "dataset=digits",
            "--set",
            "img_max=40",
            "--set",
            "imbalance=1",
            "--set",
            "epochs=1",
            "--set",
            "pivot_epoch=0",
            "--set",
            "strategy=mixed",
            "--out",
            "runs",
            "--no-progress",
        ],
        cwd=work,
        env=env,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["dataset"] == "digits" and result["strategy"] == "mixed", result
    assert list((work / "runs").rglob("results.json")), "the run wrote no results.json outside the checkout"

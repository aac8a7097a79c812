"""Which extra of ``pyproject.toml`` installs each optional dependency, and the
one line that says so when it is missing.

The library core needs only numpy and torch. Everything else is an extra,
imported where it is used (STYLE: optional dependencies, imported lazily), so
a missing one surfaces as an ``ImportError`` at that point; this module turns
it into ``... needs X: pip install 'mombs[EXTRA]'``. Imports only the standard
library: the ``mombs`` command's ``--help`` passes through it.
"""

from __future__ import annotations

#: Top-level import name -> the extra that installs it. Where several extras
#: carry a package (scipy is in ``cli``, ``seg`` and ``det``), the one named is
#: the smallest that makes the command line work; a module that needs it for a
#: task names its task's extra in its own message.
EXTRA_OF_MODULE = {
    "yaml": "cli",
    "tqdm": "cli",
    "scipy": "cli",
    "sklearn": "cli",
    "matplotlib": "viz",
    "torchvision": "vision",
    "PIL": "vision",
    "monai": "seg",
    "nibabel": "seg",
    "pyarrow": "quality",
    "pandas": "quality",
    "cleanlab": "quality",
    "lightning": "lightning",
    "torchdata": "stateful",
    "transformers": "transformers",
    "accelerate": "transformers",
}

#: The distribution (PyPI) name of an import name where the two differ.
DISTRIBUTION_OF_MODULE = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}


def install_hint(extra: str) -> str:
    """``pip install 'mombs[EXTRA]'``, quoted for the shell as every message writes it."""
    return f"pip install 'mombs[{extra}]'"


def missing_extra(err: ImportError, what: str = "this") -> str | None:
    """The one line for ``err`` when it is a missing optional dependency of a known extra.

    Args:
        err: the ``ImportError`` raised by an ``import`` statement (its ``name``
            is the module that was not found).
        what: what needed it, for the message (``"mombs train"``).

    Returns:
        ``"{what} needs {package}: pip install 'mombs[EXTRA]'"``, or ``None`` when
        the missing module is not an optional dependency of mombs (a real bug,
        whose traceback should be seen).
    """
    name = (getattr(err, "name", None) or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None:
        return None
    return f"{what} needs {DISTRIBUTION_OF_MODULE.get(name, name)}: {install_hint(extra)}"

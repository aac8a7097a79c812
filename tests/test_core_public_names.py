"""Every public class in the package has a name of its own."""

import collections
import importlib
import inspect
import pkgutil

import mombs


def test_no_two_public_classes_share_a_name():
    where = collections.defaultdict(list)
    for info in pkgutil.walk_packages(mombs.__path__, "mombs."):
        try:
            module = importlib.import_module(info.name)
        except ImportError as err:  # an optional extra that is not installed; mombs' own breakage fails
            extra = "pip install 'mombs[" in str(err) or (
                isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] != "mombs"
            )
            if not extra:
                raise
            continue
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
                where[name].append(module.__name__)
    assert len(where) > 20
    assert {name: mods for name, mods in where.items() if len(mods) > 1} == {}

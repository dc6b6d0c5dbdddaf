"""Every public module of kltrust says what it owns, and every public function, class and method
has a docstring (the API reference on the site is generated from them; `make docs` builds it)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import kltrust

# Methods whose contract is the framework's, not kltrust's: flax calls ``setup`` itself.
_FRAMEWORK_HOOKS = frozenset({"setup"})


def _public_modules() -> list:
    modules = [kltrust]
    for info in pkgutil.walk_packages(kltrust.__path__, "kltrust."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            modules.append(importlib.import_module(info.name))
    return modules


def _undocumented(module) -> list[str]:
    missing = []
    for name, obj in vars(module).items():
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if name.startswith("_") or not defined_here:
            continue
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                # A function stored under another name is a field's default (a dataclass's
                # callable field), not a method.
                if (attr.startswith("_") or attr in _FRAMEWORK_HOOKS
                        or not inspect.isfunction(member) or member.__name__ != attr):
                    continue
                # getdoc follows the MRO: a method implementing a documented base method is
                # documented by it.
                if not (inspect.getdoc(getattr(obj, attr)) or "").strip():
                    missing.append(f"{module.__name__}.{name}.{attr}")
    return missing


def test_every_public_module_has_an_opening_docstring():
    bare = [m.__name__ for m in _public_modules() if not (m.__doc__ or "").strip()]
    assert bare == [], f"modules without a docstring: {bare}"


def test_every_public_function_class_and_method_has_a_docstring():
    missing = [name for module in _public_modules() for name in _undocumented(module)]
    assert missing == [], f"public without a docstring: {missing}"



# Fixtures for the checker's own test, at module level: inspect.getdoc finds an inherited method
# docstring through the function's __qualname__, which a class defined inside a test would hide.
def _bare(): pass


def _documented():
    """Documented."""


class _Base:
    """Documented."""

    def run(self):
        """Documented here, inherited below."""


class _Child(_Base):
    def run(self): pass  # documented by _Base.run

    def extra(self): pass

    def setup(self): pass

    field = _documented  # a callable field's default: stored under another name


def test_the_check_finds_what_is_missing():
    """The checker on a module built here: a bare function, class and method are reported; a
    documented override, a framework hook, a private name and a callable field's default are not."""
    import types

    module = types.ModuleType("fake")
    for name, obj in {"bare": _bare, "documented": _documented, "_private": _bare,
                      "Base": _Base, "Child": _Child}.items():
        module.__dict__[name] = obj
    for obj in (_bare, _documented, _Base, _Child):
        obj.__module__ = "fake"  # defined "here" as far as the checker can tell
    assert sorted(_undocumented(module)) == ["fake.Child", "fake.Child.extra", "fake.bare"]

"""Import gymnax without loading the plotting stack it does not need for training.

``import gymnax`` runs its package ``__init__``, which imports every environment: its Pong
(``gymnax.environments.misc.pong``) imports seaborn (which pulls in pandas and most of scipy) and
its Catch imports ``matplotlib.pyplot``, both at module level and for ``render`` only. Measured
with ``python -X importtime`` on the 2-core machine (2026-12-01, loaded), seaborn was 3.9 s of
gymnax's 5.5 s import, and a control run never renders. gymnax itself is not patched: `defer` puts
a stand-in module in ``sys.modules`` whose first attribute use imports the real module and hands
the attribute on, so the environments' ``import seaborn as sns`` costs nothing until ``render``.
(The standard library's ``importlib.util.LazyLoader`` does not do here: on Python 3.11 the
``import`` statement reads the module's ``__spec__``, which makes a lazy module load at once.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

# Imported by gymnax environment modules at import time and used only by their render methods.
DEFERRED = ("seaborn", "matplotlib.pyplot")


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute it does not hold is asked for."""

    def __getattr__(self, attr: str):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]  # so that the import below loads the real module
        real = importlib.import_module(name)
        return getattr(real, attr)


def defer(name: str) -> None:
    """Makes ``import NAME`` bind a stand-in that imports the real module on its first attribute
    use. A no-op if ``NAME`` is already imported or not installed."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    # find_spec of a submodule imports its parent anyway; a missing parent means not installed.
    if parent and importlib.util.find_spec(parent) is None:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    module = _Deferred(name)
    module.__spec__ = spec  # read by the import statement; not the real module's loading
    module.__file__ = spec.origin
    sys.modules[name] = module
    if parent:  # `import a.b` then `a.b.f()` finds the stand-in as an attribute, as a real import would
        setattr(sys.modules[parent], child, module)


def import_gymnax():
    """gymnax, imported with `DEFERRED` deferred (see the module docstring)."""
    for name in DEFERRED:
        defer(name)
    import gymnax  # noqa: PLC0415 - after the deferral, which must come first

    return gymnax

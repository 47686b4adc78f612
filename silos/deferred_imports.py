"""Modules imported only when first used: what Great Expectations pulls in for expectations
the federation's contracts do not use (lean agents, issue 20).

`import great_expectations` imports every core expectation, and one of them
(`expect_column_kl_divergence_to_be_less_than`) imports altair for its charts and scipy.stats
for its statistics at module level: about 75 MB of an agent's memory that our suites never
touch (`schemas/contracts/gx_suite.py` builds no distribution expectation). `defer(name)` puts
a placeholder module under that name in `sys.modules`; the first attribute read on it imports
the real module, replaces the placeholder in `sys.modules` and answers from the real one, so
code that does use it (a contract with a KL-divergence or KS-test expectation, a chart) works
as before, a little later.

Why not `importlib.util.LazyLoader`: on Python 3.11 the import statement itself reads the lazy
module's `__spec__`, which loads it at once (`import altair as alt` in that GX module).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

_lock = threading.RLock()  # re-entrant: a real import may read another placeholder


class Deferred(types.ModuleType):
    """Placeholder for a module not imported yet; any attribute it lacks imports the real one."""

    def __getattr__(self, attr: str) -> object:
        return getattr(load(self.__name__), attr)


def load(name: str) -> types.ModuleType:
    """The real module `name`, imported now if only its placeholder is in `sys.modules`."""
    with _lock:
        current = sys.modules.get(name)
        if isinstance(current, Deferred):
            del sys.modules[name]
        return importlib.import_module(name)


def defer(*names: str) -> list[str]:
    """Placeholders for each of `names` not imported yet; returns the names deferred."""
    deferred = []
    with _lock:
        for name in names:
            if name in sys.modules or importlib.util.find_spec(name) is None:
                continue  # imported already (keep it), or not installed (let the import fail)
            sys.modules[name] = Deferred(name)
            deferred.append(name)
    return deferred


def is_deferred(name: str) -> bool:
    return isinstance(sys.modules.get(name), Deferred)

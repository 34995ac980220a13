"""A compiled method put over its pure-Python twin: the one rule every request-path class
follows (``ServerProtocol``, ``Exchange``, ``UpstreamConnection`` and the three modes'
exchanges).

The class is defined in Python with the twin as its method; the module that defines it
keeps the twin under a ``*_py`` name (the compiled function falls back to it, the tests
compare against it) and then calls ``install_compiled``, which replaces the methods with
the compiled module's functions, all of them or none:

- none where ``PLANO_FAST_PURE_SCANNER=1`` (``wire.PURE_ENV``: the switch every compiled
  module obeys; the suite's pure build runs the twins);
- none where the module is not built, or refuses to load (``ImportError``: a field that is
  not the slot it reads, a twin that is not the class's method -- ``_slots.slot_offset``),
  or lacks one of the functions.

Only at import, never per request: the installed methods are the compiled functions
themselves, called as the class's methods with no wrapper between.
"""

from __future__ import annotations

import importlib
import os

from plano_fast.wire import PURE_ENV


def install_compiled(cls: type, module: str, **methods: str) -> bool:
    """Set ``cls.<method>`` to the compiled ``module``'s function named by each keyword
    (``method="function"``), all or none (see the module docstring); whether they were."""
    if os.environ.get(PURE_ENV) == "1":
        return False
    try:
        compiled = importlib.import_module(module)
    except ImportError:
        return False
    try:  # (what ``from module import name`` refuses with ImportError; anything else the
        # module's own import raises, an AttributeError of a circular import say, propagates)
        functions = {method: getattr(compiled, name) for method, name in methods.items()}
    except AttributeError:
        return False
    for method, function in functions.items():
        setattr(cls, method, function)
    return True

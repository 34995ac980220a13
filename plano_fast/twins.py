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
  or lacks one of the functions (a WARNING names it: a build older than its twins).

Only at import, never per request: the installed methods are the compiled functions
themselves, called as the class's methods with no wrapper between.

A compiled module imported first (before the module of its twins: a test's import, a
tool's) imports that module itself, whose ``install_compiled`` then finds the compiled
module half-imported, its functions not defined yet; a compiled module installed after it
in the same import may read the half-imported one's functions at its own import
(``_answer`` reads ``_settle``'s).  So from then on every install waits, in order, for the
half-imported module's end: every compiled module's last statement is
``install_deferred(__name__)``, which makes them (tests/test_twins.py imports each compiled
module first in a fresh process).  A module that refuses to load after that point never
reaches its end: the next install finds it gone and makes the waiting ones (WARNING).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

from plano_fast.wire import PURE_ENV

log = logging.getLogger("plano_fast.twins")

#: the installs asked while a compiled module was half-imported (``_waiting_for``), in order
_DEFERRED: list[tuple[type | ModuleType, str, dict[str, str]]] = []
_waiting_for: str | None = None


def install_compiled(cls: type | ModuleType, module: str, **methods: str) -> bool:
    """Set ``cls.<method>`` to the compiled ``module``'s function named by each keyword
    (``method="function"``), all or none (see the module docstring); whether they were
    (False too when deferred: a compiled module half-imported, made at its end).
    ``cls`` may be a module too: its functions replaced (``gateway.dispatch``'s)."""
    global _waiting_for
    if os.environ.get(PURE_ENV) == "1":
        return False
    if _waiting_for is not None and not _initializing(sys.modules.get(_waiting_for)):
        log.warning("%s did not finish its import: the installs that waited for it are made now", _waiting_for)
        _install_waiting(_waiting_for)
    if _waiting_for is not None:
        _DEFERRED.append((cls, module, methods))
        return False
    try:
        compiled = importlib.import_module(module)
    except ImportError:
        return False
    if _initializing(compiled):
        _waiting_for = module
        _DEFERRED.append((cls, module, methods))
        return False
    return _install(cls, compiled, methods)


def install_deferred(module: str) -> None:
    """The installs asked while ``module`` (a compiled module, calling this as its last
    statement) was half-imported: made now that its functions are defined."""
    if module == _waiting_for:
        _install_waiting(module)


def _install_waiting(module: str) -> None:
    global _waiting_for
    _waiting_for = None
    waiting = _DEFERRED[:]
    del _DEFERRED[:]
    for cls, name, methods in waiting:
        compiled = sys.modules.get(name) if name == module else None
        if compiled is not None:  # (still initializing: its last statement is the caller)
            _install(cls, compiled, methods)
        else:  # (may wait again, for another half-imported module)
            install_compiled(cls, name, **methods)


def _install(cls: type | ModuleType, compiled: ModuleType, methods: dict[str, str]) -> bool:
    try:  # (what ``from module import name`` refuses with ImportError; anything else the
        # module's own import raises, an AttributeError of a circular import say, propagates)
        functions = {method: getattr(compiled, name) for method, name in methods.items()}
    except AttributeError as exc:
        log.warning("%r keeps its pure-Python twins: %s", cls, exc)
        return False
    for method, function in functions.items():
        setattr(cls, method, function)
    return True


def _initializing(module: ModuleType | None) -> bool:
    """Whether ``module``'s own import is still running (importlib marks its spec)."""
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))

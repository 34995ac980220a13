"""The plain Python modules of the request path that are also compiled, as they are, by Cython.

``setup.py`` builds each module listed in ``COMPILED_MODULES`` from its unmodified ``.py``
(no type is declared: annotations stay annotations), and the built ``.so`` is imported in
its place: the same code without the interpreter's per-call frame and bytecode dispatch
(issue 27: ~N% fewer instructions per request, README "Performance").  The ``.py`` stays the
source of truth: mypy checks it, and it runs wherever nothing was built.

Two things make the ``.py`` run instead of a built ``.so`` (``install`` puts the finder
that decides first on ``sys.meta_path`` when ``plano_fast`` is imported):

* ``PLANO_FAST_PURE_SCANNER=1``, the switch that already selects every wire module's pure
  twin: with it set the gateway runs no compiled code at all;
* in a source tree (a checkout with ``setup.py`` beside the package), a ``.so`` older than
  its ``.py``: an edited module never runs its previous build silently.  It runs from
  source and says so on stderr once; ``make env`` (or ``setup.py build_ext --inplace``)
  rebuilds only what changed.  An installed wheel is never second-guessed (its files'
  times are the installer's).

Only modules on the per-request path belong here: start-up, admin and CLI code gains
nothing from compiling.  Keep this file free of ``plano_fast`` imports: ``setup.py`` reads
the tuple without importing the package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

#: The modules ``setup.py`` compiles from their ``.py``.  tests/test_compiled_modules.py
#: checks that each is imported from its ``.so`` and that no other ``.py`` has one.
COMPILED_MODULES: Final = (
    "plano_fast.http_server",
    "plano_fast.upstream",
    "plano_fast.credentials",
    "plano_fast.key_registry",
    "plano_fast.routing",
    "plano_fast.gateway.relay",
    "plano_fast.gateway.dispatch",
    "plano_fast.gateway.phases",
    "plano_fast.gateway.endpoints",
    "plano_fast.gateway.routed",
    "plano_fast.gateway.retrying",
    "plano_fast.gateway.upstream_request",
    "plano_fast.gateway.modes.firewall",
    "plano_fast.gateway.modes.config",
    "plano_fast.gateway.modes.managed",
    "plano_fast.billing.pipeline",
    "plano_fast.billing.journal",
    "plano_fast.billing.rows",
    "plano_fast.managed.state",
    "plano_fast.managed.context",
    "plano_fast.store.sqlite",
    "plano_fast.store.sql",
)

#: The switch shared with the wire modules (plano_fast.wire.PURE_ENV): "1" runs no compiled code.
PURE_ENV: Final = "PLANO_FAST_PURE_SCANNER"

_PACKAGE_DIR: Final = Path(__file__).resolve().parent


def source_path(name: str) -> Path:
    """The ``.py`` of the compiled module ``name``."""
    return _PACKAGE_DIR.joinpath(*name.split(".")[1:]).with_suffix(".py")


def built_path(name: str) -> Path | None:
    """The ``.so`` built for ``name`` beside its ``.py``, if any."""
    py = source_path(name)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        so = py.with_suffix(suffix)
        if so.exists():
            return so
    return None


def stale_modules() -> list[str]:
    """The listed modules whose ``.so`` is older than their ``.py`` (not those never built)."""
    stale = []
    for name in COMPILED_MODULES:
        so = built_path(name)
        if so is not None and so.stat().st_mtime_ns < source_path(name).stat().st_mtime_ns:
            stale.append(name)
    return stale


class _SourceFirst(importlib.abc.MetaPathFinder):
    """A meta path finder that gives a listed module's ``.py`` when the ``.so`` must not run."""

    def __init__(self, pure: bool) -> None:
        self.pure = pure
        self.names = frozenset(COMPILED_MODULES)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        so = built_path(fullname)
        if so is None:
            return None  # nothing built: the ordinary finder finds the .py
        py = source_path(fullname)
        if not py.exists():
            return None  # an install without the sources: the .so is all there is
        if not self.pure:
            if so.stat().st_mtime_ns >= py.stat().st_mtime_ns:
                return None  # the build is current: the ordinary finder takes the .so
            sys.stderr.write(f"plano_fast: {fullname} runs from {py.name}: its compiled build is older "
                             "(rebuild with `make env` or `python setup.py build_ext --inplace`)\n")
        return importlib.util.spec_from_file_location(fullname, py)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` when it can matter (once)."""
    pure = os.environ.get(PURE_ENV) == "1"
    in_source_tree = (_PACKAGE_DIR.parent / "setup.py").exists()
    if (pure or in_source_tree) and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst(pure))

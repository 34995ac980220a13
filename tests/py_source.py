"""``inspect.getsource`` for code that may run compiled (plano_fast/_compiled.py).

A module Cython built from its ``.py`` has no source for ``inspect`` (its ``__file__`` is the
``.so``, its functions are not Python functions); the source is still the ``.py`` beside it.
"""

from __future__ import annotations

import ast
import inspect
import sys
from types import ModuleType

from plano_fast import _compiled


def py_source(obj: object) -> str:
    """The source text of a module, class or function, read from its ``.py``."""
    module = obj if isinstance(obj, ModuleType) else sys.modules[getattr(obj, "__module__")]
    if module.__name__ not in _compiled.COMPILED_MODULES:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    text = _compiled.source_path(module.__name__).read_text()
    if obj is module:
        return text
    nodes: list[ast.stmt] = ast.parse(text).body
    found: ast.stmt | None = None
    for part in getattr(obj, "__qualname__").split("."):
        found = next(n for n in nodes if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == part)
        nodes = found.body
    segment = ast.get_source_segment(text, found) if found is not None else None
    assert segment is not None, obj
    return segment

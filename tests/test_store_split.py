"""The store package by concern: the interface in parts by consumer, billing on its part.

``Store`` composes ``UsageStore`` (itself ``BillingStore`` plus the rest of the usage log,
counters and hard budgets), ``RegistryStore`` and ``AdminStore``; each method is declared
in exactly one part, and the billing pipeline calls no store method outside
``BillingStore``.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import plano_fast.store as store_pkg
from plano_fast.store import base, records, sql, times
from plano_fast.store.base import AdminStore, BillingStore, RegistryStore, Store, UsageStore
from plano_fast.store.postgres import PostgresStore
from plano_fast.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
_PARTS = (BillingStore, UsageStore, RegistryStore, AdminStore, Store)


def _declared(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if inspect.isfunction(value) and not name.startswith("_")}


def test_each_method_is_declared_in_one_part() -> None:
    seen: dict[str, str] = {}
    for part in _PARTS:
        for name in _declared(part):
            assert name not in seen, f"{name} declared in {seen[name]} and {part.__name__}"
            seen[name] = part.__name__
    public = {n for n in dir(Store) if not n.startswith("_") and inspect.isfunction(getattr(Store, n))}
    assert public == set(seen)
    assert Store.__abstractmethods__ <= set(seen) | {"__aenter__", "__aexit__"}


def test_store_composes_the_parts_and_backends_implement_all() -> None:
    assert issubclass(Store, UsageStore) and issubclass(Store, RegistryStore) and issubclass(Store, AdminStore)
    assert issubclass(UsageStore, BillingStore)
    assert not issubclass(RegistryStore, BillingStore) and not issubclass(AdminStore, UsageStore)
    for backend in (SqliteStore, PostgresStore):
        assert issubclass(backend, Store)
        assert not backend.__abstractmethods__


def test_billing_calls_only_the_billing_part() -> None:
    """What the issue asked: billing depends on the methods it uses, about eight."""
    allowed = _declared(BillingStore)
    assert len(allowed) == 8
    for module in ("flusher", "pricer", "budget", "pipeline"):
        tree = ast.parse((ROOT / "plano_fast" / "billing" / f"{module}.py").read_text(encoding="utf-8"))
        called = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "store"
        }
        assert called <= allowed, (module, called - allowed)
        # and the store it takes is typed as the billing part, not the whole interface
        hints = {
            ast.unparse(arg.annotation)
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == "__init__"
            for arg in node.args.args
            if arg.arg == "store" and arg.annotation is not None
        }
        assert hints == {"BillingStore"}, (module, hints)


def test_package_reexports_are_the_homes_objects() -> None:
    homes = (base, records, sql, times)
    for name in store_pkg.__all__:
        obj = getattr(store_pkg, name)
        if name == "open_store":
            continue
        owners = [m.__name__ for m in homes if name in vars(m) and vars(m)[name] is obj]
        assert owners, name

"""``twins.install_compiled``: the one rule that puts compiled methods over their twins.

Each case on a throwaway class whose methods are the "twins": the compiled module's
functions are installed all together (``True``), or none of them (``False``, the class
unchanged) when one name is missing, when the module does not exist, or when
``PLANO_FAST_PURE_SCANNER=1``.  And the request path's classes carry the compiled
functions (or, in the pure build, their twins)."""

from __future__ import annotations

import os

import pytest

from plano_fast import twins
from plano_fast.gateway import relay  # noqa: F401 - before any compiled module, as the gateway imports them
from plano_fast.wire import PURE_ENV

pytest.importorskip("plano_fast.gateway._forward", reason="the Cython extensions are not built")
_SETTLE = "plano_fast.gateway._settle"


def _twin(self: object) -> str:
    return "twin"


def _class() -> type:
    return type("Throwaway", (), {"make_event": _twin, "observe": _twin})


def test_every_method_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PURE_ENV, raising=False)
    from plano_fast.gateway import _settle

    cls = _class()
    assert twins.install_compiled(cls, _SETTLE, make_event="make_event", observe="observe") is True
    assert cls.make_event is _settle.make_event and cls.observe is _settle.observe  # type: ignore[attr-defined]


@pytest.mark.parametrize("module, names", [
    (_SETTLE, {"make_event": "make_event", "observe": "no_such_function"}),  # one missing: none
    ("plano_fast.gateway._no_such_module", {"make_event": "make_event"}),  # not built
])  # fmt: skip
def test_none_is_installed_when_one_is_missing(monkeypatch: pytest.MonkeyPatch, module: str,
                                               names: dict[str, str]) -> None:
    monkeypatch.delenv(PURE_ENV, raising=False)
    cls = _class()
    assert twins.install_compiled(cls, module, **names) is False
    assert cls.make_event is _twin and cls.observe is _twin  # type: ignore[attr-defined]


def test_the_pure_switch_installs_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PURE_ENV, "1")
    cls = _class()
    assert twins.install_compiled(cls, _SETTLE, make_event="make_event", observe="observe") is False
    assert cls.make_event is _twin and cls.observe is _twin  # type: ignore[attr-defined]


def test_the_request_path_classes_carry_the_compiled_methods() -> None:
    from plano_fast import http_server
    from plano_fast.gateway import relay
    from plano_fast.gateway.modes import config, firewall, managed

    pure = os.environ.get(PURE_ENV) == "1"
    pairs = [
        (config.ConfigExchange.start, config.start_py, "plano_fast.gateway._config", "start"),
        (firewall.FirewallExchange.start, firewall.start_py, "plano_fast.gateway._firewall", "start"),
        (managed.ManagedExchange.start, managed.start_py, "plano_fast.gateway._managed", "start"),
        (managed.ManagedExchange.aim, managed.aim_py, "plano_fast.gateway._managed", "aim"),
        (managed.ManagedExchange._complete, managed.complete_py, "plano_fast.gateway._managed", "complete"),
        (managed.ManagedExchange._billed, managed.billed_py, "plano_fast.gateway._managed", "billed"),
        (relay.Exchange.make_event, relay.make_event_py, _SETTLE, "make_event"),
        (relay.Exchange.observe, relay.observe_py, _SETTLE, "observe"),
        (relay.Exchange.forward_now, relay.forward_now_py, "plano_fast.gateway._forward", "forward_now"),
        (http_server.ServerProtocol.data_received, http_server.data_received_py, "plano_fast._serve", "data_received"),
        (http_server.ServerProtocol._start, http_server.start_py, "plano_fast._serve", "start"),
    ]  # fmt: skip
    for method, twin, module, name in pairs:
        if pure:
            assert method is twin, name
        else:
            import importlib

            assert method is getattr(importlib.import_module(module), name), (module, name)

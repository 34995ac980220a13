"""``twins.install_compiled``: the one rule that puts compiled methods over their twins.

Each case on a throwaway class whose methods are the "twins": the compiled module's
functions are installed all together (``True``), or none of them (``False``, the class
unchanged) when one name is missing, when the module does not exist, or when
``PLANO_FAST_PURE_SCANNER=1``.  And the request path's classes carry the compiled
functions (or, in the pure build, their twins)."""

from __future__ import annotations

import os
import subprocess
import sys

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


_CHECK = """
import importlib, os
from plano_fast import http_server, spans, tracing
from plano_fast.gateway import dispatch, relay
from plano_fast.gateway.modes import config, firewall, managed
pure = os.environ.get("PLANO_FAST_PURE_SCANNER") == "1"
pairs = [
    (config.ConfigExchange.start, config.start_py, "plano_fast.gateway._config", "start"),
    (firewall.FirewallExchange.start, firewall.start_py, "plano_fast.gateway._firewall", "start"),
    (managed.ManagedExchange.start, managed.start_py, "plano_fast.gateway._managed", "start"),
    (managed.ManagedExchange.aim, managed.aim_py, "plano_fast.gateway._managed", "aim"),
    (managed.ManagedExchange._complete, managed.complete_py, "plano_fast.gateway._managed", "complete"),
    (managed.ManagedExchange._billed, managed.billed_py, "plano_fast.gateway._managed", "billed"),
    (relay.Exchange.make_event, relay.make_event_py, "plano_fast.gateway._settle", "make_event"),
    (relay.Exchange.observe, relay.observe_py, "plano_fast.gateway._settle", "observe"),
    (relay.Exchange.forward_now, relay.forward_now_py, "plano_fast.gateway._forward", "forward_now"),
    (relay.UpstreamConnection.data_received, None, "plano_fast.gateway._answer", "data_received"),
    (http_server.ServerProtocol.data_received, http_server.data_received_py, "plano_fast._serve", "data_received"),
    (http_server.ServerProtocol._start, http_server.start_py, "plano_fast._serve", "start"),
    (dispatch.dispatch, dispatch.dispatch_py, "plano_fast.gateway._dispatch", "dispatch"),
    (spans.end_attempt, spans.end_attempt_py, "plano_fast._spans", "end_attempt"),
    (spans.end_server, spans.end_server_py, "plano_fast._spans", "end_server"),
    (tracing.Tracing.may_sample, tracing.may_sample_py, "plano_fast._spans", "may_sample"),
    (tracing.Tracing.sample, tracing.sample_py, "plano_fast._spans", "sample"),
    (tracing.Tracing.start_server, tracing.start_server_py, "plano_fast._spans", "start_server"),
    (tracing.Tracing.start_attempt, tracing.start_attempt_py, "plano_fast._spans", "start_attempt"),
]
for method, twin, module, name in pairs:
    compiled = getattr(importlib.import_module(module), name)
    assert (method is not compiled) if pure else (method is compiled), (module, name)
    assert twin is None or (method is twin) == pure, (module, name)
print("ok")
"""


@pytest.mark.parametrize("pure", [False, True])
def test_the_request_path_classes_carry_the_compiled_methods(pure: bool) -> None:
    """In a fresh process importing the gateway's modules as the gateway does: every
    compiled method installed, or in the pure build every twin kept.  (Importing a
    compiled module first: the test below.)"""
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    if pure:
        env[PURE_ENV] = "1"
    done = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


#: every compiled module whose functions ``install_compiled`` puts over their twins
COMPILED = ("plano_fast._serve", "plano_fast.gateway._settle", "plano_fast.gateway._forward",
            "plano_fast.gateway._answer", "plano_fast.gateway._config", "plano_fast.gateway._firewall",
            "plano_fast.gateway._managed", "plano_fast.gateway._dispatch", "plano_fast._spans")


def test_a_compiled_module_imported_first_still_installs_itself() -> None:
    """A fresh process per compiled module that imports it before anything else (so its
    twins' module, imported by it, finds it half-imported): every compiled method is
    installed all the same (before: that module's twins kept, silently -- the
    import-order note of tests/conftest.py).  The processes run side by side."""
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    children = {module: subprocess.Popen([sys.executable, "-c", f"import {module}\n" + _CHECK], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for module in COMPILED}  # fmt: skip
    for module, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0 and out.strip() == "ok", (module, err[-3000:])


def test_a_compiled_module_without_a_function_is_named(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A built module that lacks one of the functions (a build older than its twins):
    none installed, and a WARNING says which class keeps its twins and why."""
    monkeypatch.delenv(PURE_ENV, raising=False)
    cls = _class()
    with caplog.at_level("WARNING", logger="plano_fast.twins"):
        assert twins.install_compiled(cls, _SETTLE, make_event="make_event", observe="no_such_function") is False
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "Throwaway" in record.getMessage()
    assert "no_such_function" in record.getMessage()

"""The guardrails beyond the DLP floor, read from a config in one place: guard models
(plano_fast.guard_models), Plano's filter chains (plano_fast.filter_chain) and the
response side (plano_fast.response_guard).  The loader validates with it; the gateway
builds its runtime objects from it.  Pure: config in, dataclasses out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from plano_fast.filter_chain import FilterChains, parse_chains
from plano_fast.guard_models import GuardModel, parse_guards
from plano_fast.guardrails import GuardrailConfigError, parse_policy
from plano_fast.response_guard import ResponseChecks, ResponsePolicy, parse_response_policy


class _Settings(Protocol):
    @property
    def guardrails(self) -> dict[str, Any] | None: ...

    @property
    def guard_models(self) -> dict[str, Any] | None: ...

    @property
    def filter_chain(self) -> dict[str, Any] | None: ...

    @property
    def response_guardrails(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class GuardChecks:
    guards: tuple[GuardModel, ...]
    chains: FilterChains | None
    response: ResponsePolicy | None

    @property
    def prechecks(self) -> bool:
        """Something to do before a request is routed (guards, input filters)."""
        return bool(self.guards) or (self.chains is not None and bool(self.chains.input))

    def response_checks(self) -> ResponseChecks | None:
        chains = self.chains if self.chains is not None and self.chains.output else None
        if chains is None and self.response is None:
            return None
        return ResponseChecks(self.response, chains)


def _listener(raw: dict[str, Any], loc: str) -> Any:
    """The served listener's raw mapping from its location ("listeners[2]")."""
    if not loc.startswith("listeners["):
        return None
    listeners = raw.get("listeners")
    try:
        return listeners[int(loc[len("listeners[") : -1])] if isinstance(listeners, list) else None
    except (ValueError, IndexError):
        return None


def parse_checks(raw: dict[str, Any], settings: _Settings, listener_loc: str) -> GuardChecks:
    """GuardConfigError (from plano_fast.guard_models) naming the field."""
    guards = parse_guards(raw.get("prompt_guards"), settings.guard_models)
    chains = parse_chains(raw.get("filters"), _listener(raw, listener_loc), listener_loc, settings.filter_chain)
    try:
        request_policy = parse_policy(settings.guardrails)
    except GuardrailConfigError:
        request_policy = None  # reported by the loader on its own
    response = parse_response_policy(settings.response_guardrails, request_policy)
    return GuardChecks(guards, chains, response)

"""Reading a config: YAML (duplicate keys refused), the version, listeners, the
``plano_fast:`` section, then the whole file into a :class:`GatewayConfig`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import yaml

from plano_fast import unimplemented as UNIMPLEMENTED
from plano_fast.config.model import (
    DEFAULT_ADDRESS,
    DEFAULT_PORTS,
    DEFAULT_TIMEOUT_S,
    SUPPORTED_VERSIONS,
    ConfigError,
    GatewayConfig,
    GatewaySettings,
    ListenerConfig,
    parse_duration,
)
from plano_fast.config.model_providers import _ProviderBuilder
from plano_fast.config.names import name_checker
from plano_fast.config.report import _fmt_loc
from plano_fast.config.schema import _LegacyListenersIn, _ListenerItemIn, _SingularListenerIn, _TopIn
from plano_fast.guard_checks import parse_checks
from plano_fast.guard_models import GuardConfigError
from plano_fast.guardrails import GuardrailConfigError, parse_policy
from plano_fast.model_metrics import parse_sources as parse_metrics_sources
from plano_fast.preference_routing import parse as parse_preferences
from plano_fast.ratelimit import RateLimitConfigError, parse_limits

def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    allow_missing_env: bool = False,
) -> GatewayConfig:
    """Read and validate a config file; ``env`` (default ``os.environ``) expands ``$VAR``.

    ``allow_missing_env``: an unset variable is replaced by a placeholder and reported as a
    warning instead of an error, so a config can be checked away from its secrets (never
    for serving: the placeholders would be sent).
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read config: {exc}"]) from None
    return parse_config(text, source=source, env=env, allow_missing_env=allow_missing_env)


def parse_config(
    text: str,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    *,
    allow_missing_env: bool = False,
) -> GatewayConfig:
    """Validate config text; raises :class:`ConfigError` listing every problem found."""
    b = _Builder(source, os.environ if env is None else env, allow_missing_env)
    return b.build(text)



class _DupKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _DupKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with `<<:` may be overridden; only explicit ones count
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if dup:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_DupKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


class _Builder(_ProviderBuilder):
    """The whole file; the provider sections are :class:`_ProviderBuilder`'s."""

    def build(self, text: str) -> GatewayConfig:
        try:
            data = yaml.load(text, Loader=_DupKeyLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
            raise ConfigError([f"{self.source}: {where}YAML syntax error: {what}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{self.source}: YAML error: {exc}"]) from None
        if data is None:
            raise ConfigError([f"{self.source}: the config is empty"])
        if not isinstance(data, dict):
            raise ConfigError(
                [f"{self.source}: expected a mapping at the top level, got {type(data).__name__}"]
            )
        for key in data:
            if not isinstance(key, str):
                self.err((), f"top-level key {key!r} is not a string")
        if self.errors:
            raise ConfigError(self.errors)

        top = self.validate(_TopIn, data, ())
        version = top.version if top is not None else str(data.get("version", ""))

        listeners = self.build_listeners(data)
        settings = self.build_settings(data.get("plano_fast"), data.get("overrides"))
        # Firewall mode forwards each registered key to its registered upstream and routes
        # nothing by model, so (without managed mode, whose pipes name providers) it needs
        # no model_providers.
        firewall_only = settings is not None and settings.mode == "firewall" and not settings.managed
        if settings is not None:
            listener_s = next((ls.timeout_s for ls in listeners or () if ls.type == "model"), DEFAULT_TIMEOUT_S)
            self.default_timeouts = (
                settings.upstream_connect_timeout_s,
                settings.upstream_first_byte_timeout_s or listener_s,
                settings.upstream_body_idle_timeout_s or listener_s,
            )
        provs = self.build_providers(data, required=not firewall_only)
        aliases = self.build_aliases(data.get("model_aliases"), provs)
        self.check_fallbacks(provs)
        # Config mode has no projects: a project selector or override would never match.
        projectless = settings is not None and settings.mode != "firewall" and not settings.managed
        try:
            limits = parse_limits(data.get("ratelimits"))
        except RateLimitConfigError as exc:
            self.errors.append(f"{self.source}: {exc}")
        else:
            for limit in limits:
                if projectless and limit.scope == "project":
                    self.warn(("ratelimits", limit.index, "selector", "project"), "never matches: "
                              "config mode has no projects (firewall and managed mode have)")
        if settings is not None:
            try:
                policy = parse_policy(settings.guardrails)
            except GuardrailConfigError as exc:
                self.errors.append(f"{self.source}: {exc}")
            else:
                if projectless and policy is not None and policy.projects:
                    self.warn(("plano_fast", "guardrails", "projects"), "never applies: config mode "
                              "has no projects (firewall and managed mode have)")

        if settings is not None and listeners is not None:
            served = next((ls for ls in listeners if ls.type == "model"), None)
            try:
                checks = parse_checks(data, settings, served.loc if served is not None else "")
            except GuardConfigError as exc:
                self.errors.append(f"{self.source}: {exc}")
            else:
                if settings.mode == "firewall" and (checks.prechecks or checks.response_checks()):
                    self.warn(("plano_fast", "mode"), "guard models, filter chains and response "
                              "guardrails apply to config-mode requests only, not to firewall-mode "
                              "ones (docs/guardrails.md)")  # fmt: skip

        if (
            data.get("routing_preferences") is not None
            and version in SUPPORTED_VERSIONS
            and version != "v0.4.0"
        ):
            self.err(
                ("routing_preferences",), "top-level routing_preferences needs version v0.4.0"
            )

        preference = None
        if provs is not None:
            preference, perrs, pwarns = parse_preferences(data, tuple(provs), name_checker(provs, aliases))
            for loc, msg in perrs:
                self.err(loc, msg)
            for loc, msg in pwarns:
                self.warn(loc, msg)
        metrics_sources, merrs = parse_metrics_sources(data.get("model_metrics_sources"))
        for loc, msg in merrs:
            self.err(loc, msg)
        if preference is not None and metrics_sources:
            preference = dataclasses.replace(preference, metrics_sources=metrics_sources)
        elif metrics_sources and not merrs:
            self.warn(("model_metrics_sources",), "not fetched: they rank routing_preferences models "
                      "(selection_policy cheapest / fastest) and no preference routing is configured")

        if self.errors or top is None or provs is None or settings is None or listeners is None:
            raise ConfigError(self.errors or [f"{self.source}: invalid config"])
        model_listeners = [ls for ls in listeners if ls.type == "model"]
        self.report_unimplemented(data, listeners, model_listeners[0])
        return GatewayConfig(
            version=version,
            listener=model_listeners[0],
            listeners=tuple(listeners),
            providers=tuple(provs),
            model_aliases=aliases,
            alias_fallbacks=self.alias_fallbacks,
            settings=settings,
            warnings=tuple(self.warnings),
            raw=data,
            unimplemented=tuple(self.unimplemented),
            preference_routing=preference,
            upstream_timeouts=self.default_timeouts,
        )

    def report_unimplemented(
        self, data: dict[str, Any], listeners: list[ListenerConfig], served: ListenerConfig
    ) -> None:
        """One line per listener and field of :mod:`plano_fast.unimplemented` in use."""
        where = f"{served.loc or 'the default listener'} '{served.name}' on {served.address}:{served.port}"
        skipped: list[str] = []  # listeners reported whole: their fields are not repeated
        for ls in listeners:
            if ls.type in UNIMPLEMENTED.LISTENER_TYPES:
                reason = UNIMPLEMENTED.LISTENER_TYPES[ls.type]
            elif ls is not served:
                reason = "a second model listener"
            else:
                continue
            skipped.append(ls.loc)
            self.not_implemented(ls.loc, f"{reason}; not served (plano_fast serves {where})")
        for loc, reason in UNIMPLEMENTED.unimplemented_fields(data):
            path = _fmt_loc(loc)
            if any(path.startswith(s + ".") or path.startswith(s + "[") for s in skipped):
                continue
            self.not_implemented(path, reason + " (ignored)")

    # -- listeners

    def build_listeners(self, data: dict[str, Any]) -> list[ListenerConfig] | None:
        raw, single = data.get("listeners"), data.get("listener")
        n_err = len(self.errors)
        out: list[ListenerConfig] = []
        if raw is not None and single is not None:
            self.err(("listener",), "use either 'listeners' or the legacy 'listener', not both")
            return None
        if single is not None:
            s = self.validate(_SingularListenerIn, single, ("listener",))
            if s is not None:
                out.append(
                    ListenerConfig(
                        "ingress_traffic",
                        s.address or DEFAULT_ADDRESS,
                        DEFAULT_PORTS["prompt"] if s.port is None else s.port,
                        s.timeout or DEFAULT_TIMEOUT_S,
                        "prompt",
                        loc="listener",
                    )
                )
        elif isinstance(raw, list):
            for i, item in enumerate(raw):
                li = self.validate(_ListenerItemIn, item, ("listeners", i))
                if li is None:
                    continue
                kind: str
                if li.type is not None:
                    kind = li.type
                else:
                    kind = "prompt" if li.name.startswith("ingress") else "model"
                    self.warn(("listeners", i, "type"), f"missing; assuming '{kind}'")
                port = li.port if li.port is not None else DEFAULT_PORTS.get(kind)
                if port is None:
                    self.err(("listeners", i, "port"), f"required for {kind} listeners")
                    continue
                out.append(
                    ListenerConfig(
                        li.name,
                        li.address or DEFAULT_ADDRESS,
                        port,
                        li.timeout or DEFAULT_TIMEOUT_S,
                        kind,
                        li.max_retries,
                        li.router,
                        loc=_fmt_loc(("listeners", i)),
                    )
                )
        elif isinstance(raw, dict):
            lg = self.validate(_LegacyListenersIn, raw, ("listeners",))
            if lg is not None:
                for name, kind, part in (
                    ("egress_traffic", "model", lg.egress_traffic),
                    ("ingress_traffic", "prompt", lg.ingress_traffic),
                ):
                    if part is None:
                        continue
                    port = DEFAULT_PORTS[kind] if part.port is None else part.port
                    out.append(
                        ListenerConfig(
                            name,
                            part.address or DEFAULT_ADDRESS,
                            port,
                            part.timeout or DEFAULT_TIMEOUT_S,
                            kind,
                            loc=_fmt_loc(("listeners", name)),
                        )
                    )
        elif raw is not None:
            self.err(
                ("listeners",),
                "expected a list of listeners or the legacy {egress_traffic, ingress_traffic} "
                f"mapping, got {type(raw).__name__}",
            )
        if len(self.errors) != n_err:
            return None
        if isinstance(raw, list) and out and not any(ls.type == "model" for ls in out):
            # Plano serves no model listener here; starting the implicit 0.0.0.0:12000 one
            # would expose the providers' keys on a port the config never asked for.
            found = "; ".join(f"{ls.loc} '{ls.name}' ({ls.type}, port {ls.port})" for ls in out)
            self.err(
                ("listeners",),
                f"no type: model listener, the only kind plano_fast serves ({found} "
                "not implemented); add one, e.g. {type: model, name: model_listener, "
                "address: 127.0.0.1, port: 12000}",
            )
            return None
        if not any(ls.type == "model" for ls in out):
            out.insert(
                0,
                ListenerConfig(
                    "egress_traffic",
                    DEFAULT_ADDRESS,
                    DEFAULT_PORTS["model"],
                    DEFAULT_TIMEOUT_S,
                    "model",
                ),
            )
        return out

    # -- plano_fast settings

    def build_settings(self, raw: Any, overrides: Any) -> GatewaySettings | None:
        data = {} if raw is None else raw
        if isinstance(data, dict):
            data = dict(data)
            for key in ("database_url", "sqlite_path", "admin_key"):
                if isinstance(data.get(key), str):
                    data[key] = self.expand(data[key], ("plano_fast", key))
            models = data.get("guard_models")
            if isinstance(models, dict):  # api keys of guard models: $VAR expanded
                data["guard_models"] = models = dict(models)
                for kind, guard in models.items():
                    if isinstance(guard, dict) and isinstance(guard.get("api_key"), str):
                        loc = ("plano_fast", "guard_models", kind, "api_key")
                        models[kind] = {**guard, "api_key": self.expand(guard["api_key"], loc)}
            if "sqlite_path" in data and data["sqlite_path"] is None:
                del data["sqlite_path"]  # unset env var: already reported
        s = self.validate(GatewaySettings, data, ("plano_fast",))
        if s is None:
            return None
        if not s.usage_synchronous_commit and not (s.database_url or "").lower().startswith(
            ("postgres://", "postgresql://")
        ):  # (never a setting accepted and ignored)
            self.err(("plano_fast", "usage_synchronous_commit"),
                     "false needs a PostgreSQL database_url (SQLite's commits do not wait for a "
                     "flush already: synchronous = NORMAL)")
            return None
        # Plano's overrides.upstream_connect_timeout applies unless plano_fast sets its own.
        if isinstance(overrides, dict) and "upstream_connect_timeout" in overrides:
            if "upstream_connect_timeout_s" not in s.model_fields_set:
                try:
                    t = parse_duration(overrides["upstream_connect_timeout"])
                except ValueError as exc:
                    self.err(("overrides", "upstream_connect_timeout"), str(exc))
                    return None
                s = s.model_copy(update={"upstream_connect_timeout_s": t})
        return s


"""``model_providers`` (or ``llm_providers``) and ``model_aliases``: each provider item
becomes a :class:`ModelProvider` with its hot-path values precomputed, then Plano's
checks across the set (one default, no duplicates, base_url where needed, aliases and
fallbacks that resolve)."""

from __future__ import annotations

import re
from typing import Any

from plano_fast import providers as P
from plano_fast import unimplemented as UNIMPLEMENTED
from plano_fast.config.model import DEFAULT_TIMEOUT_S, ModelProvider, RoutingPreference
from plano_fast.config.names import ModelIndex
from plano_fast.config.report import Loc, _Reporter
from plano_fast.config.retry_schema import retry_policy_of
from plano_fast.config.schema import _AliasIn, _ProviderIn


class _ProviderBuilder(_Reporter):
    #: alias -> the models after its first target (``target: [a, b, c]``), set by build_aliases
    alias_fallbacks: dict[str, tuple[str, ...]]
    #: (connect, first byte, body idle) seconds for providers that set none of their own
    #: (the plano_fast: defaults; set before build_providers)
    default_timeouts: tuple[float, float, float] = (5.0, DEFAULT_TIMEOUT_S, DEFAULT_TIMEOUT_S)

    def build_providers(self, data: dict[str, Any], required: bool = True) -> list[ModelProvider] | None:
        section = "model_providers"
        raw = data.get("model_providers")
        if data.get("llm_providers") is not None:
            if raw is not None:
                self.err(
                    ("llm_providers",),
                    "use either model_providers or llm_providers (deprecated), not both",
                )
                return None
            section, raw = "llm_providers", data["llm_providers"]
        if raw is None and not required:
            return []
        if raw is None:
            self.err(
                ("model_providers",),
                "at least one model provider is required (only plano_fast.mode: firewall "
                "without managed mode routes nothing by model)",
            )
            return None
        if not isinstance(raw, list):
            self.err((section,), f"expected a list, got {type(raw).__name__}")
            return None
        if not raw:
            self.err((section,), "at least one model provider is required")
            return None
        n_err = len(self.errors)
        out: list[ModelProvider] = []
        for i, item in enumerate(raw):
            pin = self.validate(_ProviderIn, item, (section, i))
            if pin is not None:
                mp = self.build_provider(pin, (section, i))
                if mp is not None:
                    out.append(mp)
        if len(self.errors) != n_err:
            return None
        self.check_provider_set(out, section)
        return out if len(self.errors) == n_err else None

    def build_provider(self, pin: _ProviderIn, loc: Loc) -> ModelProvider | None:
        n_err = len(self.errors)
        model_str = pin.model.strip()
        if not model_str:
            self.err(loc + ("model",), "must not be empty")
            return None
        for legacy in ("provider", "endpoint", "protocol", "usage", "stream"):
            if getattr(pin, legacy) is not None:
                self.warn(loc + (legacy,), "deprecated field (accepted for older configs)")

        # Which provider, and the model id sent upstream.
        if pin.provider is not None:  # 0.1.0: `provider: openai` + bare `model: gpt-4o`
            prefix = pin.provider.strip()
            model_id = model_str
            if model_id.startswith(prefix + "/"):
                model_id = model_id[len(prefix) + 1 :]
        elif "/" in model_str:
            prefix, model_id = model_str.split("/", 1)
        elif pin.provider_interface is not None:  # 0.2.0: provider_interface + bare model
            prefix, model_id = pin.provider_interface, model_str
        else:
            self.err(
                loc + ("model",),
                f"'{model_str}' has no provider prefix; write it as <provider>/<model> "
                f"(e.g. openai/{model_str}) or set provider_interface",
            )
            return None
        prefix = prefix.strip()
        if not prefix or not model_id:
            self.err(loc + ("model",), f"'{model_str}' is not of the form <provider>/<model>")
            return None
        is_wildcard = model_id == "*"
        known = P.canonical_provider_id(prefix)
        iface = P.canonical_provider_id(pin.provider_interface) if pin.provider_interface else None

        base_url = self.expand(pin.base_url, loc + ("base_url",))
        if pin.endpoint is not None:
            if pin.base_url is not None:
                self.err(loc + ("endpoint",), "set either base_url or the legacy endpoint")
                return None
            ep = pin.endpoint.strip()
            ep_scheme = pin.protocol or ("https" if ep.endswith(":443") else "http")
            base_url = ep if "://" in ep else f"{ep_scheme}://{ep}"
        if pin.base_url is not None and base_url is None:
            return None  # env error already reported

        if known is None:
            missing = "base_url" if base_url is None else "provider_interface"
            if base_url is None or iface is None:
                self.err(
                    loc + (missing,),
                    f"provider '{prefix}' (from model '{model_str}') is not built in; "
                    "it needs base_url and provider_interface",
                )
                return None
            provider = "custom"
        else:
            provider = known
            spec_own = P.PROVIDERS[known]
            if base_url is None:
                if spec_own.requires_base_url or spec_own.base_url is None:
                    hint = f" (e.g. {spec_own.base_url})" if spec_own.base_url else ""
                    self.err(loc + ("base_url",), f"provider '{known}' requires base_url{hint}")
                    return None
                base_url = spec_own.base_url
        assert base_url is not None
        spec = P.PROVIDERS[iface or provider]

        try:
            origin = P.parse_base_url(base_url)
        except ValueError as exc:
            self.err(loc + ("base_url",), str(exc))
            return None
        paths = P.upstream_paths(spec, origin.path, model_id, is_wildcard)
        wire_api = spec.wire_api
        auth_style = spec.auth_style
        gemini_base: str | None = None
        if spec.id == "gemini" and origin.path.strip("/") and not origin.path.rstrip("/").endswith(
            "/openai"
        ):
            # A base_url such as https://generativelanguage.googleapis.com/v1beta (not its
            # /openai compatibility layer) selects Gemini's native API: requests are then
            # converted to generateContent (plano_fast extension; Plano uses the compat API).
            wire_api, auth_style = "gemini", P.AUTH_GOOG
            gemini_base = origin.path.rstrip("/")
            paths = P.Paths(None, None, None, False)
        if spec.wire_api in UNIMPLEMENTED.WIRE_APIS:
            self.not_implemented(loc, UNIMPLEMENTED.WIRE_APIS[spec.wire_api])

        # Credentials.
        # With passthrough_auth the key is never sent, so an unset $VAR only warns.
        access_key = self.expand(
            pin.access_key, loc + ("access_key",), required=not pin.passthrough_auth
        ) or None
        if access_key is not None and not _KEY_RE.fullmatch(access_key):
            self.err(loc + ("access_key",), "contains characters not allowed in an HTTP header")
        name = (pin.name or model_str).strip()
        if pin.passthrough_auth and pin.access_key is not None:
            self.warn(
                loc,
                f"provider '{name}' has both passthrough_auth: true and access_key; the "
                "access_key is ignored and the client's credentials are forwarded",
            )
        auth: tuple[tuple[bytes, bytes], ...] = ()
        chat_auth: tuple[tuple[bytes, bytes], ...] = ()
        if access_key and not pin.passthrough_auth and len(self.errors) == n_err:
            auth = P.auth_headers_for(auth_style, access_key)
            chat_auth = P.auth_headers_for(P.AUTH_BEARER, access_key) if (
                spec.wire_api == P.WIRE_ANTHROPIC
            ) else auth

        extra = self.build_headers(pin.headers, loc + ("headers",))

        http_host = pin.http_host.strip() if pin.http_host is not None else None
        if http_host is not None:
            http_host = self.expand(http_host, loc + ("http_host",))
            if http_host is not None and not _HOST_RE.fullmatch(http_host):
                self.err(loc + ("http_host",), f"not a valid Host header value: {http_host!r}")
        host_header = http_host or origin.host_header

        prefs = tuple(
            RoutingPreference(r.name, r.description) for r in pin.routing_preferences or ()
        )
        if not prefs and pin.usage:
            prefs = (RoutingPreference(name, pin.usage),)
        if is_wildcard and pin.default:
            self.err(loc + ("default",), f"'{model_str}' is a wildcard and cannot be the default")
        if is_wildcard and pin.routing_preferences:
            self.err(
                loc + ("routing_preferences",),
                f"'{model_str}' is a wildcard; wildcards cannot have routing_preferences",
            )
        if len(self.errors) != n_err:
            return None
        return ModelProvider(
            name=name,
            provider=provider,
            model=model_id,
            wire_api=wire_api,
            scheme=origin.scheme,
            host=origin.host,
            port=origin.port,
            tls=origin.tls,
            sni=origin.host,
            host_header=host_header,
            chat_completions_path=paths.chat_completions,
            messages_path=paths.messages,
            access_key=access_key,
            passthrough_auth=pin.passthrough_auth,
            auth_headers=auth,
            extra_headers=extra,
            default=pin.default,
            is_wildcard=is_wildcard,
            routing_preferences=prefs,
            prefix=prefix,
            interface=spec.id,
            base_url=base_url,
            http_host=http_host,
            responses_path=paths.responses,
            chat_auth_headers=chat_auth,
            model_in_path=paths.model_in_path,
            gemini_base_path=gemini_base,
            retry_policy=retry_policy_of(pin.retry_policy) if pin.retry_policy is not None else None,
            timeouts=(
                pin.connect_timeout or self.default_timeouts[0],
                pin.first_byte_timeout or self.default_timeouts[1],
                pin.body_idle_timeout or self.default_timeouts[2],
            ),
        )

    def build_headers(
        self, headers: dict[str, str] | None, loc: Loc
    ) -> tuple[tuple[bytes, bytes], ...]:
        out: list[tuple[bytes, bytes]] = []
        for key, value in (headers or {}).items():
            hl = loc + (key,)
            if not _TOKEN_RE.fullmatch(key):
                self.err(hl, "not a valid HTTP header name")
                continue
            if key.lower() in _RESERVED_HEADERS:
                self.err(hl, f"'{key}' is managed by the gateway and cannot be set here"
                         + (" (use http_host)" if key.lower() == "host" else ""))
                continue
            v = self.expand(value, hl)
            if v is None:
                continue
            if not _HEADER_VALUE_RE.fullmatch(v):
                self.err(hl, "value contains characters not allowed in an HTTP header")
                continue
            out.append((key.lower().encode("ascii"), v.encode("latin-1")))
        return tuple(out)

    def check_provider_set(self, provs: list[ModelProvider], section: str) -> None:
        names: dict[str, int] = {}
        models: dict[str, int] = {}
        wild: dict[str, int] = {}
        bare: dict[str, int] = {}
        default_at: int | None = None
        for i, p in enumerate(provs):
            if p.name in names:
                also = f"{section}[{names[p.name]}]"
                self.err((section, i, "name"), f"duplicate name '{p.name}' (also {also})")
            else:
                names[p.name] = i
            owner = p.prefix.lower() if p.provider == "custom" else p.provider
            full = f"{owner}/{p.model}"
            if p.is_wildcard:
                if owner in wild:
                    also = f"{section}[{wild[owner]}]"
                    self.err((section, i, "model"), f"duplicate wildcard '{full}' (also {also})")
                else:
                    wild[owner] = i
            elif full in models:
                also = f"{section}[{models[full]}]"
                self.err((section, i, "model"), f"duplicate model '{full}' (also {also})")
            else:
                models[full] = i
                if p.model in bare:
                    self.warn(
                        (section, i, "model"),
                        f"model id '{p.model}' is also configured by {section}[{bare[p.model]}]; "
                        f"a request for the bare name '{p.model}' goes to the first one",
                    )
                else:
                    bare[p.model] = i
            if p.default:
                if default_at is not None:
                    self.err(
                        (section, i, "default"),
                        f"more than one default provider (also {section}[{default_at}]); "
                        "at most one may be default",
                    )
                else:
                    default_at = i

    # -- aliases

    def check_fallbacks(self, provs: list[ModelProvider] | None) -> None:
        """A retry_policy's fallback_models must be configured models: failover never
        reaches a model the operator did not list."""
        if provs is None:
            return
        index = ModelIndex(provs)
        for i, p in enumerate(provs):
            for j, fallback in enumerate(p.retry_policy.fallback_models if p.retry_policy else ()):
                if index.lookup(fallback) is None:
                    self.err(
                        ("model_providers", i, "retry_policy", "fallback_models", j),
                        f"'{fallback}' is not a configured model (a fallback must be one of "
                        f"the configured models: {', '.join(index.names())})",
                    )

    def build_aliases(self, raw: Any, provs: list[ModelProvider] | None) -> dict[str, str]:
        """alias -> its (first) target; a target list's other models go to ``alias_fallbacks``."""
        out: dict[str, str] = {}
        self.alias_fallbacks = {}
        if raw is None:
            return out
        if not isinstance(raw, dict):
            self.err(
                ("model_aliases",),
                f"expected a mapping of alias -> {{target: model}}, got {type(raw).__name__}",
            )
            return out
        for alias, spec in raw.items():
            loc: Loc = ("model_aliases", str(alias))
            if not isinstance(alias, str) or not alias:
                self.err(loc, "alias names must be non-empty strings")
                continue
            if isinstance(spec, str):
                target = spec
            else:
                a = self.validate(_AliasIn, spec, loc)
                if a is None:
                    continue
                if isinstance(a.target, list):
                    names = [t.strip() for t in a.target]
                    if not names or not all(names):
                        self.err((*loc, "target"), "a target list needs at least one model name, none empty")
                        continue
                    if len(set(names)) != len(names):
                        self.err((*loc, "target"), "a model is listed twice")
                        continue
                    target, rest = names[0], tuple(names[1:])
                    if rest:
                        self.alias_fallbacks[alias] = rest
                else:
                    target = a.target
            out[alias] = target.strip()
        if provs is None:
            return out  # provider errors already reported; targets cannot be checked
        index = ModelIndex(provs)
        for alias, target in out.items():
            for name in (target, *self.alias_fallbacks.get(alias, ())):
                if index.lookup(name) is None:
                    self.err(
                        ("model_aliases", alias, "target"),
                        f"'{name}' is not a configured model "
                        f"(configured: {', '.join(index.names())})",
                    )
            if index.lookup(alias) is not None:
                self.warn(
                    ("model_aliases", alias), "shadowed by a configured model of the same name"
                )
        return out


_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KEY_RE = re.compile(r"[\x21-\x7e]*")
_HEADER_VALUE_RE = re.compile(r"[\x20-\x7e\x80-\xff\t]*")
_HOST_RE = re.compile(r"[A-Za-z0-9.\-_\[\]:]+")
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
    }
)


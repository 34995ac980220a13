"""Loading and validating ``plano_config.yaml`` (Plano / ArchGW format) for plano_fast.

Pure: text (plus an environment mapping) in, a frozen :class:`GatewayConfig` out.  The
schema is Plano's ``config/plano_config_schema.yaml`` across its versions, checked with
pydantic models (``extra="forbid"``, strict types, as Plano's JSON schema is), followed by
the semantic checks of Plano's ``config_generator.py``.  Every problem found is reported,
not just the first, as ``<file>: <field path>: <reason>`` lines in a :class:`ConfigError`.

Accepted shapes
---------------
* ``version``: ``v0.1``, ``v0.1.0``, ``0.1-beta``, ``0.2.0``, ``v0.3.0``, ``v0.4.0``.
* ``listeners``: the list form (``[{type: model|prompt|agent, name, address, port,
  timeout, ...}]``), the legacy object form (``{egress_traffic: {...}, ingress_traffic:
  {...}}``) or the 0.1.0 singular ``listener:`` (that one configured the *prompt* listener;
  the LLM egress listener was implicit, 0.0.0.0:12000).  The gateway serves the first
  ``type: model`` listener (``egress_traffic``); the legacy forms without one get the
  implicit 0.0.0.0:12000, but a list of listeners without one is an error (Plano would
  serve no model listener there).  Listeners that are not served are reported in
  ``GatewayConfig.unimplemented``.
  Lenient extras: a list item without ``type`` is inferred from its name (``ingress*`` ->
  prompt, else model) and may carry the legacy ``message_format``; a missing ``listeners``
  means the default model listener.  ``timeout``: "30s", "500ms", "1m", "1h" or a number of
  seconds; default 300 s.
* ``model_providers`` or the deprecated ``llm_providers`` (same items).  Both present is
  an error, as in Plano.  Required, except in firewall mode without managed mode (it
  routes nothing by model).  Items: ``model`` (required, ``provider/model`` or
  ``provider/*``), ``name``, ``access_key``, ``base_url``, ``provider_interface``,
  ``passthrough_auth``, ``default``, ``http_host``, ``headers``, ``routing_preferences``;
  the older ``provider``, ``endpoint``, ``protocol``, ``usage`` and ``stream`` are
  accepted with a deprecation warning.
* ``model_aliases: {alias: {target: model}}`` (a bare string target is also accepted).
  The target must resolve to a configured model (exact, bare or via a wildcard).
* Plano's other top-level keys are kept in ``raw`` (type-checked only) and reported in
  ``GatewayConfig.unimplemented`` (the list: :mod:`plano_fast.unimplemented`); any other
  key is an error.  ``state_storage_v1_responses`` (an older name of ``state_storage``) is accepted.
* ``plano_fast:`` -- this gateway's own settings (:class:`GatewaySettings`).  Plano itself
  would reject this key; keep it out of configs that must also run on Plano.

Environment: ``$VAR`` / ``${VAR}`` are expanded in ``access_key``, ``base_url``,
``http_host``, ``headers`` values and ``plano_fast.database_url`` / ``sqlite_path`` /
``admin_key``.  A referenced variable that is unset (or empty) is an error naming the
field and variable -- only a warning for the ``access_key`` of a ``passthrough_auth``
provider, which is unused, and, with ``allow_missing_env``, a warning and a placeholder.

Checks taken from Plano: at most one ``default: true``; a wildcard cannot be the default
or carry routing_preferences; duplicate names, duplicate ``provider/model`` entries and
duplicate wildcards are errors; ``azure_openai``, ``ollama``, ``qwen``,
``amazon_bedrock`` and ``plano`` need ``base_url``; a prefix that is not built in needs
``base_url`` and ``provider_interface`` (its ``provider`` is then "custom"); top-level
``routing_preferences`` need ``v0.4.0``.  Where plano_fast is more lenient than Plano: two
providers sharing a bare model id (``openai/llama``, ``groq/llama``) only warn -- a request
for the bare id goes to the first; an alias target may resolve through a wildcard;
``provider_interface`` may be set on a built-in provider (it then picks paths and wire
format, e.g. an OpenAI-speaking proxy for ``anthropic/...`` models).

The package, split by role (``from plano_fast.config import X`` is the public surface):

* :mod:`.model` -- the frozen result types (:class:`GatewayConfig`, :class:`ModelProvider`,
  :class:`ListenerConfig`, :class:`GatewaySettings`) and :func:`parse_duration`;
* :mod:`.schema` -- the pydantic input models of Plano's schema (``extra="forbid"``, strict);
* :mod:`.names` -- :class:`ModelIndex`, the model-name lookup tables the loader checks
  aliases and fallbacks with and :class:`plano_fast.routing.Router` is built on;
* :mod:`.report` -- problem reporting (``file: field path: reason``) and ``$VAR`` expansion;
* :mod:`.model_providers` -- ``model_providers`` / ``model_aliases``: provider building and
  Plano's semantic checks;
* :mod:`.loader` -- YAML (duplicate keys refused), versions, listeners, the ``plano_fast:``
  section, the whole-file build, :func:`load_config` and :func:`parse_config`.

Nothing here imports :mod:`plano_fast.routing` (routing imports this package).
"""

from __future__ import annotations

from plano_fast.config.loader import load_config, parse_config
from plano_fast.config.model import (
    DEFAULT_ADDRESS,
    DEFAULT_PORTS,
    DEFAULT_TIMEOUT_S,
    SUPPORTED_VERSIONS,
    ConfigError,
    GatewayConfig,
    GatewaySettings,
    ListenerConfig,
    ModelProvider,
    RoutingPreference,
    parse_duration,
)
from plano_fast.config.names import ModelIndex
from plano_fast.config.schema import _TopIn  # noqa: F401  (tests read its fields)

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "GatewaySettings",
    "ListenerConfig",
    "ModelProvider",
    "RoutingPreference",
    "SUPPORTED_VERSIONS",
    "load_config",
    "parse_config",
    "parse_duration",
    "ModelIndex",
]

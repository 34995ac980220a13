"""The CLI mirror of the admin API: ``plano-fast keys | limits | usage | users | projects |
pipes | provider-keys | tokens ...`` and the local ``plano-fast managed new-master-key``.

``add_admin_commands(subparsers)`` registers the subcommands on the ``plano-fast`` parser;
``run_admin_command(args)`` performs the HTTP call and prints the JSON answer (exit code 0;
1 when the API answered with an error, printed to stderr; 2 when it could not be reached
or the arguments were unusable).  Every subcommand sets ``args.admin_action``, so the CLI
dispatches with ``if getattr(args, "admin_action", None): return run_admin_command(args)``.

Client keys never leave this process in clear text: ``keys register`` and
``keys deactivate`` hash the key locally (SHA-256, as the gateway does) and send only
``key_hash``.  The key is read from stdin (``--api-key-stdin``, or a hidden prompt on a
terminal) or from an environment variable (``--api-key-env NAME``), never from the
command line, where ``ps`` and shell history would keep it.

Provider API keys (``provider-keys add``) are read the same way (stdin, hidden prompt or
an environment variable, never argv) and sent to the admin API, which encrypts them.
``tokens create`` prints the new ``xproxy_`` token: the only time it is shown.
``managed new-master-key`` needs no server: it prints a fresh base64 32-byte master key.

The admin key comes from ``--admin-key`` or ``$PLANO_FAST_ADMIN_KEY`` (preferred: the
environment keeps it out of ``ps``); the URL from ``--admin-url`` or
``$PLANO_FAST_ADMIN_URL``, default ``http://127.0.0.1:12002``.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

ADMIN_KEY_ENV: Final = "PLANO_FAST_ADMIN_KEY"
ADMIN_URL_ENV: Final = "PLANO_FAST_ADMIN_URL"
DEFAULT_ADMIN_PORT: Final = 12002
DEFAULT_ADMIN_URL: Final = f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}"
TIMEOUT_S: Final = 30.0

ACTIONS: Final = (
    "keys.register",
    "keys.list",
    "keys.deactivate",
    "keys.activate",
    "limits.set",
    "limits.list",
    "limits.delete",
    "usage",
    "users.create",
    "users.list",
    "projects.create",
    "projects.list",
    "pipes.create",
    "pipes.list",
    "pipes.delete",
    "provider-keys.add",
    "provider-keys.list",
    "provider-keys.revoke",
    "tokens.create",
    "tokens.list",
    "tokens.revoke",
    "managed.new-master-key",
)
LOCAL_ACTIONS: Final = frozenset({"managed.new-master-key"})  # answered without the API
PROJECT_HELP: Final = "a project's id or name"
TARGET_FIELDS: Final = {
    "provider": "provider",
    "model": "model",
    "filter": "model_filter",
    "model_filter": "model_filter",
    "key": "provider_key_id",
    "provider_key_id": "provider_key_id",
    "weight": "weight",
}


class AdminClientError(Exception):
    """The admin API could not be reached, or the arguments could not be used."""


# --------------------------------------------------------------------------- HTTP


def request_json(
    method: str,
    url: str,
    admin_key: str,
    body: dict[str, Any] | None = None,
    *,
    timeout_s: float = TIMEOUT_S,
) -> tuple[int, Any]:
    """One admin API call; returns ``(status, parsed JSON body)`` for any HTTP status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {admin_key}")
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminClientError(f"cannot reach the admin API at {_origin(url)}: {reason}") from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, {"error": "invalid_response", "message": raw[:200].decode("utf-8", "replace")}


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- argparse


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin-url",
        default=os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL),
        help=f"admin API base URL (default: ${ADMIN_URL_ENV} or {DEFAULT_ADMIN_URL})",
    )
    common.add_argument(
        "--admin-key",
        default=None,
        help=f"admin key (default: ${ADMIN_KEY_ENV}; prefer the environment variable)",
    )
    return common


def _key_source(parser: argparse.ArgumentParser, *, allow_hash: bool, what: str = "client key") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--api-key-stdin", action="store_true", help=f"read the {what} from stdin")
    group.add_argument(
        "--api-key-env", metavar="NAME", help=f"read the {what} from this environment variable"
    )
    if allow_hash:
        group.add_argument("--key-hash", help="the key's SHA-256 hex instead of the key")


def add_admin_commands(subparsers: Any) -> None:
    """Register ``keys register|list|deactivate|activate``, ``limits set|list|delete`` and
    ``usage`` on an ``argparse`` subparsers object (``parser.add_subparsers(...)``)."""
    common = _common()

    keys = subparsers.add_parser("keys", help="firewall-mode client keys (admin API)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    reg = keys_sub.add_parser("register", parents=[common], help="register a client key (sent as its hash)")
    _key_source(reg, allow_hash=True)
    reg.add_argument("--provider", required=True, help="provider id, e.g. openai, anthropic, gemini")
    reg.add_argument(
        "--upstream-url", required=True, help="where this key's requests go, e.g. https://api.openai.com"
    )
    reg.add_argument("--display-name")
    reg.add_argument(
        "--project",
        help="project id or name (a new name creates the project; absent: a new project for the key)",
    )
    reg.add_argument("--egress-ip", help="source IP for this key's upstream connections")
    reg.set_defaults(admin_action="keys.register")
    lst = keys_sub.add_parser("list", parents=[common], help="list registered keys (hashes only)")
    lst.add_argument("--project-id", "--project", dest="project_id", help=PROJECT_HELP)
    lst.set_defaults(admin_action="keys.list")
    for name, action in (("deactivate", "keys.deactivate"), ("activate", "keys.activate")):
        p = keys_sub.add_parser(name, parents=[common], help=f"{name} a registered key")
        _key_source(p, allow_hash=True)
        p.set_defaults(admin_action=action)

    limits = subparsers.add_parser("limits", help="spending limits (admin API)")
    limits_sub = limits.add_subparsers(dest="limits_command", required=True)
    lset = limits_sub.add_parser("set", parents=[common], help="create or replace a spending limit")
    lset.add_argument("--scope-kind", choices=("project", "user", "key"), default="project")
    lset.add_argument("--scope-id", required=True, help="project id or name, user id, or key hash")
    lset.add_argument("--period", choices=("total", "monthly", "daily"), default="monthly")
    amount = lset.add_mutually_exclusive_group(required=True)
    amount.add_argument("--limit-usd", help="exact decimal USD, e.g. 12.34")
    amount.add_argument("--limit-nano-usd", type=int)
    lset.add_argument("--enforcement", choices=("soft", "hard"), default="soft")
    lset.add_argument("--inactive", action="store_true", help="store the limit switched off")
    lset.set_defaults(admin_action="limits.set")
    llist = limits_sub.add_parser("list", parents=[common], help="list spending limits")
    llist.add_argument("--scope-kind", choices=("project", "user", "key"))
    llist.add_argument("--scope-id", help="project id or name, user id, or key hash")
    llist.set_defaults(admin_action="limits.list")
    ldel = limits_sub.add_parser("delete", parents=[common], help="delete a spending limit")
    ldel.add_argument("limit_id")
    ldel.set_defaults(admin_action="limits.delete")

    usage = subparsers.add_parser(
        "usage", parents=[common],
        help="recent usage or daily totals (admin API); 'usage reprice': re-derive rows and costs",
    )  # fmt: skip
    usage.add_argument(
        "usage_command", nargs="?", choices=["reprice"],
        help="reprice: re-derive every row's columns and cost from its stored provider usage "
        "and the current prices, directly in the configured database (needs --config)",
    )  # fmt: skip
    usage.add_argument("--config", "-c", help="plano_config.yaml (for reprice)")
    usage.add_argument("--page-rows", type=int, default=2_000, help="rows per transaction (reprice)")
    usage.add_argument("--dry-run", action="store_true", help="count what reprice would change")
    usage.add_argument("--project-id", "--project", dest="project_id", help=PROJECT_HELP)
    usage.add_argument("--limit", type=int, default=20, help="rows of recent usage (default 20)")
    usage.add_argument("--totals", action="store_true", help="per project, model and UTC day instead")
    usage.add_argument("--days", type=int, default=30, help="days of totals (default 30)")
    usage.set_defaults(admin_action="usage")

    _add_directory_commands(subparsers, common)
    _add_managed_commands(subparsers, common)


def _add_directory_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``users create|list`` and ``projects create|list``."""
    users = subparsers.add_parser("users", help="users (admin API)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    ucreate = users_sub.add_parser("create", parents=[common], help="create a user")
    ucreate.add_argument("--name", required=True)
    ucreate.add_argument("--email")
    ucreate.add_argument("--id", dest="object_id", metavar="ID", help="choose the id (default: a new UUID)")
    ucreate.set_defaults(admin_action="users.create")
    users_sub.add_parser("list", parents=[common], help="list users").set_defaults(admin_action="users.list")

    projects = subparsers.add_parser("projects", help="projects (admin API)")
    projects_sub = projects.add_subparsers(dest="projects_command", required=True)
    pcreate = projects_sub.add_parser("create", parents=[common], help="create a project")
    pcreate.add_argument("--name", required=True)
    pcreate.add_argument("--id", dest="object_id", metavar="ID", help="choose the id (default: a new UUID)")
    pcreate.set_defaults(admin_action="projects.create")
    plist = projects_sub.add_parser("list", parents=[common], help="list projects")
    plist.set_defaults(admin_action="projects.list")


def _add_managed_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``pipes``, ``provider-keys``, ``tokens`` (admin API) and ``managed new-master-key``."""
    pipes = subparsers.add_parser("pipes", help="managed-mode pipes (admin API)")
    pipes_sub = pipes.add_subparsers(dest="pipes_command", required=True)
    pcreate = pipes_sub.add_parser("create", parents=[common], help="create a pipe")
    pcreate.add_argument("--project-id", "--project", dest="project_id", required=True, help=PROJECT_HELP)
    pcreate.add_argument("--name", default="default", help="pipe name (default: default)")
    pcreate.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="SPEC",
        help="a target, in failover order (repeat): provider=P,model=M,filter=F,key=PROVIDER_KEY_ID,"
        "weight=N; provider and key are required, and model or filter (filter=* serves every model)",
    )
    pcreate.set_defaults(admin_action="pipes.create")
    plist = pipes_sub.add_parser("list", parents=[common], help="list pipes")
    plist.add_argument("--project-id", "--project", dest="project_id", help=PROJECT_HELP)
    plist.set_defaults(admin_action="pipes.list")
    pdel = pipes_sub.add_parser("delete", parents=[common], help="delete a pipe")
    pdel.add_argument("pipe_id")
    pdel.add_argument(
        "--revoke-tokens", action="store_true", help="also revoke the active tokens bound to it"
    )
    pdel.set_defaults(admin_action="pipes.delete")

    pkeys = subparsers.add_parser("provider-keys", help="managed-mode provider keys (admin API)")
    pkeys_sub = pkeys.add_subparsers(dest="provider_keys_command", required=True)
    kadd = pkeys_sub.add_parser(
        "add", parents=[common], help="store a provider API key (encrypted by the gateway)"
    )
    _key_source(kadd, allow_hash=False, what="provider API key")
    kadd.add_argument("--provider", required=True, help="provider id, e.g. openai, anthropic, gemini")
    kadd.add_argument(
        "--project-id", "--project", dest="project_id",
        help="the project (id or name) that may use it (default: shared by all)",
    )  # fmt: skip
    kadd.add_argument("--display-name")
    kadd.set_defaults(admin_action="provider-keys.add")
    klist = pkeys_sub.add_parser("list", parents=[common], help="list provider keys (no secrets)")
    klist.add_argument("--project-id", "--project", dest="project_id", help=PROJECT_HELP)
    klist.set_defaults(admin_action="provider-keys.list")
    krevoke = pkeys_sub.add_parser("revoke", parents=[common], help="revoke a provider key")
    krevoke.add_argument("provider_key_id")
    krevoke.set_defaults(admin_action="provider-keys.revoke")

    tokens = subparsers.add_parser("tokens", help="managed-mode xproxy_ tokens (admin API)")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    tcreate = tokens_sub.add_parser("create", parents=[common], help="create a token (shown once)")
    tcreate.add_argument("--project-id", "--project", dest="project_id", required=True, help=PROJECT_HELP)
    tcreate.add_argument("--user-id")
    tcreate.add_argument("--pipe-id", help="default: the project's 'default' pipe (or its only one)")
    tcreate.add_argument("--name")
    expiry = tcreate.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=int, metavar="SECONDS", help="lifetime in seconds")
    expiry.add_argument("--expires-at", metavar="ISO8601", help="e.g. 2030-01-31T12:00:00Z")
    tcreate.add_argument(
        "--token-only", action="store_true", help="print only the token (for scripts)"
    )
    tcreate.set_defaults(admin_action="tokens.create")
    tlist = tokens_sub.add_parser("list", parents=[common], help="list tokens (never the tokens)")
    tlist.add_argument("--project-id", "--project", dest="project_id", help=PROJECT_HELP)
    tlist.add_argument("--user-id")
    tlist.set_defaults(admin_action="tokens.list")
    trevoke = tokens_sub.add_parser("revoke", parents=[common], help="revoke a token")
    trevoke.add_argument("token_id")
    trevoke.set_defaults(admin_action="tokens.revoke")

    managed = subparsers.add_parser("managed", help="managed-mode utilities (local)")
    managed_sub = managed.add_subparsers(dest="managed_command", required=True)
    mkey = managed_sub.add_parser(
        "new-master-key", help="print a fresh master key for $PLANO_FAST_MASTER_KEY (no server needed)"
    )
    mkey.set_defaults(admin_action="managed.new-master-key")


# --------------------------------------------------------------------------- commands


def _read_secret(args: argparse.Namespace, what: str, options: str) -> str:
    """A secret from ``--api-key-env NAME``, stdin or a hidden prompt: never from argv."""
    if args.api_key_env:
        value = os.environ.get(args.api_key_env, "")
        if not value.strip():
            raise AdminClientError(f"environment variable {args.api_key_env} is empty or unset")
        return value.strip()
    if not args.api_key_stdin and sys.stdin.isatty():
        value = getpass.getpass(f"{what}: ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise AdminClientError(f"no {what} given (use {options})")
    return value


def _read_client_key(args: argparse.Namespace) -> str:
    return _read_secret(args, "client API key", "--api-key-stdin, --api-key-env NAME or --key-hash")


def parse_target(spec: str) -> dict[str, Any]:
    """``provider=openai,model=gpt-4o,filter=gpt-4o*,key=<id>,weight=2`` -> a target body."""
    target: dict[str, Any] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        field = TARGET_FIELDS.get(name.strip().lower())
        if not sep or field is None:
            known = ", ".join(sorted(TARGET_FIELDS))
            raise AdminClientError(f"--target {spec!r}: expected name=value pairs ({known}), got {part!r}")
        if field in target:
            raise AdminClientError(f"--target {spec!r}: {name.strip()} given twice")
        value = value.strip()
        if field == "weight":
            try:
                target[field] = int(value)
            except ValueError:
                raise AdminClientError(f"--target {spec!r}: weight must be an integer") from None
        else:
            target[field] = value
    for required in ("provider", "provider_key_id"):
        if not target.get(required):
            raise AdminClientError(f"--target {spec!r}: needs {'key' if required != 'provider' else required}=")
    return target


def _optional(args: argparse.Namespace, body: dict[str, Any], **fields: str) -> dict[str, Any]:
    """Copy the set arguments into ``body``: body field -> argument name."""
    for field, arg in fields.items():
        value = getattr(args, arg)
        if value is not None:
            body[field] = value
    return body


def _quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _key_hash(args: argparse.Namespace) -> str:
    if getattr(args, "key_hash", None):
        return str(args.key_hash).strip().lower()
    return hash_api_key(_read_client_key(args))


def _query(params: dict[str, Any]) -> str:
    present = {k: str(v) for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(present) if present else ""


def build_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """``(method, path with query, JSON body)`` for a parsed admin subcommand."""
    action = args.admin_action
    if action == "keys.register":
        body: dict[str, Any] = {
            "key_hash": _key_hash(args),
            "provider": args.provider,
            "upstream_url": args.upstream_url,
        }
        for field in ("display_name", "project", "egress_ip"):
            if getattr(args, field) is not None:
                body[field] = getattr(args, field)
        return "POST", "/api-keys/register", body
    if action == "keys.list":
        return "GET", "/api-keys" + _query({"project_id": args.project_id}), None
    if action in ("keys.deactivate", "keys.activate"):
        return "POST", "/api-keys/" + action.split(".")[1], {"key_hash": _key_hash(args)}
    if action == "limits.set":
        body = {
            "scope_kind": args.scope_kind,
            "scope_id": args.scope_id,
            "period": args.period,
            "enforcement": args.enforcement,
            "active": not args.inactive,
        }
        if args.limit_usd is not None:
            body["limit_usd"] = args.limit_usd  # sent as a string: exact
        else:
            body["limit_nano_usd"] = args.limit_nano_usd
        return "PUT", "/limits", body
    if action == "limits.list":
        return "GET", "/limits" + _query({"scope_kind": args.scope_kind, "scope_id": args.scope_id}), None
    if action == "limits.delete":
        return "DELETE", "/limits/" + urllib.parse.quote(args.limit_id, safe=""), None
    if action == "usage":
        if args.totals:
            return "GET", "/usage/totals" + _query({"project_id": args.project_id, "days": args.days}), None
        return "GET", "/usage/recent" + _query({"project_id": args.project_id, "limit": args.limit}), None
    managed = _build_managed_request(args)
    if managed is not None:
        return managed
    raise AdminClientError(f"unknown admin command {action!r}")


def _build_managed_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None] | None:
    action = args.admin_action
    if action == "users.create":
        return "POST", "/users", _optional(args, {"name": args.name}, email="email", id="object_id")
    if action == "users.list":
        return "GET", "/users", None
    if action == "projects.create":
        return "POST", "/projects", _optional(args, {"name": args.name}, id="object_id")
    if action == "projects.list":
        return "GET", "/projects", None
    if action == "pipes.create":
        targets = [parse_target(spec) for spec in args.target]
        return "POST", "/pipes", {"project_id": args.project_id, "name": args.name, "targets": targets}
    if action == "pipes.list":
        return "GET", "/pipes" + _query({"project_id": args.project_id}), None
    if action == "pipes.delete":
        query = _query({"revoke_tokens": "true" if args.revoke_tokens else None})
        return "DELETE", "/pipes/" + _quoted(args.pipe_id) + query, None
    if action == "provider-keys.add":
        body: dict[str, Any] = {"provider": args.provider}
        _optional(args, body, project_id="project_id", display_name="display_name")
        body["api_key"] = _read_secret(args, "provider API key", "--api-key-stdin or --api-key-env NAME")
        return "POST", "/provider-keys", body
    if action == "provider-keys.list":
        return "GET", "/provider-keys" + _query({"project_id": args.project_id}), None
    if action == "provider-keys.revoke":
        return "POST", "/provider-keys/" + _quoted(args.provider_key_id) + "/revoke", None
    if action == "tokens.create":
        body = _optional(
            args, {"project_id": args.project_id}, user_id="user_id", pipe_id="pipe_id", name="name",
            expires_in_s="expires_in", expires_at="expires_at",
        )  # fmt: skip
        return "POST", "/tokens", body
    if action == "tokens.list":
        return "GET", "/tokens" + _query({"project_id": args.project_id, "user_id": args.user_id}), None
    if action == "tokens.revoke":
        return "POST", "/tokens/" + _quoted(args.token_id) + "/revoke", None
    return None


def _run_local(args: argparse.Namespace) -> int:
    if args.admin_action == "managed.new-master-key":
        from plano_fast.managed.crypto import MASTER_KEY_ENV, generate_master_key

        print(generate_master_key())
        print(f"(set it as ${MASTER_KEY_ENV} on every gateway instance; keep it secret)", file=sys.stderr)
        return 0
    print(f"plano-fast: error: unknown local command {args.admin_action!r}", file=sys.stderr)
    return 2


def _error_line(status: int, answer: Any) -> str:
    """An API error answer as one line: status, code, message (and field details)."""
    if not isinstance(answer, dict):
        return f"admin API answered {status}"
    code = answer.get("error") or ""
    message = " ".join(str(answer.get("message") or "").split())
    line = f"admin API answered {status} {code}".rstrip() + (f": {message}" if message else "")
    if isinstance(answer.get("token_ids"), list):  # pipes delete: the tokens in the way
        line += f" (token_ids: {', '.join(map(str, answer['token_ids']))})"
    return line


# The list answers, by the key that holds the list: what "nothing matched" means there.
_LISTS: Final = {
    "api_keys": "no API keys",
    "limits": "no spending limits",
    "usage": "no usage rows",
    "totals": "no usage in that period",
    "users": "no users",
    "projects": "no projects",
    "pipes": "no pipes",
    "provider_keys": "no provider keys",
    "tokens": "no tokens",
}


def _nothing_matched(args: argparse.Namespace, answer: Any) -> str | None:
    """A note for a list answer with no items (printed to stderr; stdout stays JSON)."""
    if not isinstance(answer, dict):
        return None
    for key, what in _LISTS.items():
        items = answer.get(key)
        if isinstance(items, list) and not items and not answer.get("all_projects"):
            filters = [
                f"{name.replace('_', ' ')} {getattr(args, name)}"
                for name in ("project_id", "user_id", "scope_kind", "scope_id")
                if getattr(args, name, None)
            ]
            return f"{what}" + (f" for {', '.join(filters)}" if filters else "") + " (nothing matched)"
    return None


def run_admin_command(args: argparse.Namespace) -> int:
    """Run a parsed admin subcommand: print the JSON answer; 0 ok, 1 API error, 2 no call.

    Errors are one line on stderr; a list with nothing in it is also said on stderr.
    """
    if args.admin_action in LOCAL_ACTIONS:
        return _run_local(args)
    admin_key = args.admin_key or os.environ.get(ADMIN_KEY_ENV, "")
    try:
        if not admin_key:
            raise AdminClientError(f"no admin key: set ${ADMIN_KEY_ENV} (or pass --admin-key)")
        method, path, body = build_request(args)
        status, answer = request_json(method, args.admin_url.rstrip("/") + path, admin_key, body)
    except AdminClientError as exc:
        print(f"plano-fast: error: {exc}", file=sys.stderr)
        return 2
    if status >= 400:
        print(f"plano-fast: error: {_error_line(status, answer)}", file=sys.stderr)
        return 1
    if args.admin_action == "tokens.create" and getattr(args, "token_only", False) and isinstance(answer, dict):
        print(answer["token"])
        return 0
    print(json.dumps(answer, indent=2, sort_keys=True))
    note = _nothing_matched(args, answer)
    if note is not None:
        print(f"plano-fast: {note}", file=sys.stderr)
    return 0

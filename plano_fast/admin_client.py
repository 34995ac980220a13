"""The CLI mirror of the admin API: ``plano-fast keys | limits | usage ...``.

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
)


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


def _key_source(parser: argparse.ArgumentParser, *, allow_hash: bool) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--api-key-stdin", action="store_true", help="read the client key from stdin")
    group.add_argument(
        "--api-key-env", metavar="NAME", help="read the client key from this environment variable"
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
    lst.add_argument("--project-id")
    lst.set_defaults(admin_action="keys.list")
    for name, action in (("deactivate", "keys.deactivate"), ("activate", "keys.activate")):
        p = keys_sub.add_parser(name, parents=[common], help=f"{name} a registered key")
        _key_source(p, allow_hash=True)
        p.set_defaults(admin_action=action)

    limits = subparsers.add_parser("limits", help="spending limits (admin API)")
    limits_sub = limits.add_subparsers(dest="limits_command", required=True)
    lset = limits_sub.add_parser("set", parents=[common], help="create or replace a spending limit")
    lset.add_argument("--scope-kind", choices=("project", "user", "key"), default="project")
    lset.add_argument("--scope-id", required=True, help="project id, user id or key hash")
    lset.add_argument("--period", choices=("total", "monthly", "daily"), default="monthly")
    amount = lset.add_mutually_exclusive_group(required=True)
    amount.add_argument("--limit-usd", help="exact decimal USD, e.g. 12.34")
    amount.add_argument("--limit-nano-usd", type=int)
    lset.add_argument("--enforcement", choices=("soft", "hard"), default="soft")
    lset.add_argument("--inactive", action="store_true", help="store the limit switched off")
    lset.set_defaults(admin_action="limits.set")
    llist = limits_sub.add_parser("list", parents=[common], help="list spending limits")
    llist.add_argument("--scope-kind", choices=("project", "user", "key"))
    llist.add_argument("--scope-id")
    llist.set_defaults(admin_action="limits.list")
    ldel = limits_sub.add_parser("delete", parents=[common], help="delete a spending limit")
    ldel.add_argument("limit_id")
    ldel.set_defaults(admin_action="limits.delete")

    usage = subparsers.add_parser("usage", parents=[common], help="recent usage or daily totals (admin API)")
    usage.add_argument("--project-id")
    usage.add_argument("--limit", type=int, default=20, help="rows of recent usage (default 20)")
    usage.add_argument("--totals", action="store_true", help="per project, model and UTC day instead")
    usage.add_argument("--days", type=int, default=30, help="days of totals (default 30)")
    usage.set_defaults(admin_action="usage")


# --------------------------------------------------------------------------- commands


def _read_client_key(args: argparse.Namespace) -> str:
    if args.api_key_env:
        value = os.environ.get(args.api_key_env, "")
        if not value.strip():
            raise AdminClientError(f"environment variable {args.api_key_env} is empty or unset")
        return value.strip()
    if not args.api_key_stdin and sys.stdin.isatty():
        value = getpass.getpass("client API key: ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise AdminClientError("no client key given (use --api-key-stdin, --api-key-env NAME or --key-hash)")
    return value


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
    raise AdminClientError(f"unknown admin command {action!r}")


def run_admin_command(args: argparse.Namespace) -> int:
    """Run a parsed admin subcommand: print the JSON answer; 0 ok, 1 API error, 2 no call."""
    admin_key = args.admin_key or os.environ.get(ADMIN_KEY_ENV, "")
    try:
        if not admin_key:
            raise AdminClientError(f"no admin key: set ${ADMIN_KEY_ENV} (or pass --admin-key)")
        method, path, body = build_request(args)
        status, answer = request_json(method, args.admin_url.rstrip("/") + path, admin_key, body)
    except AdminClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(answer, indent=2, sort_keys=True)
    if status >= 400:
        print(f"admin API answered {status}:\n{text}", file=sys.stderr)
        return 1
    print(text)
    return 0

"""Command line: ``plano-fast serve | validate | migrate | usage reprice`` and the admin API
mirror.

Errors are one line on stderr (``plano-fast: error: ...``) and a non-zero exit, never a
traceback (``PLANO_FAST_DEBUG=1`` adds the traceback of an unexpected error).

``serve`` readies the store before it listens (``plano_fast.store.migrate.prepare_schema``):
a new or empty embedded SQLite database gets the schema; an older schema, or an empty
PostgreSQL database, is migrated with ``--migrate`` and refused (one line naming the
command to run) without it.  ``validate`` and ``serve`` print one line per config field
this version does not implement; ``--strict`` makes them errors.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import os
import signal
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final, NoReturn

from plano_fast import __version__
from plano_fast import wire
from plano_fast.admin_client import add_admin_commands, run_admin_command
from plano_fast.config import ConfigError, GatewayConfig, load_config
from plano_fast.ratelimit import describe as describe_limits
from plano_fast.ratelimit import headers_policy

log = logging.getLogger("plano_fast")

CONFIG_ENV = "PLANO_FAST_CONFIG"  # the config file when --config is not given (the image sets it)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="plano-fast", description="A fast LLM API gateway.")
    parser.add_argument("--version", action="version", version=f"plano-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    config_env = os.environ.get(CONFIG_ENV) or None
    config_help = f"plano_config.yaml (default: ${CONFIG_ENV})"

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", "-c", required=config_env is None, default=config_env, help=config_help)
    serve.add_argument("--host", help="listen address (default: the listener's address)")
    serve.add_argument("--port", type=int, help="listen port (default: the listener's port)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    serve.add_argument("--log-level", default=os.environ.get("PLANO_FAST_LOG_LEVEL", "INFO"))
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="bring an older (or empty PostgreSQL) schema up to date before serving",
    )
    serve.add_argument(
        "--strict", action="store_true", help="refuse a config using fields not implemented here"
    )

    validate = sub.add_parser("validate", help="check a config file without starting")
    validate.add_argument("config", nargs="?" if config_env else None, default=config_env, help=config_help)
    validate.add_argument(
        "--strict", action="store_true", help="fields not implemented here are errors"
    )
    validate.add_argument(
        "--allow-missing-env",
        action="store_true",
        help="check with placeholders for unset $VARs (a config away from its secrets)",
    )

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument(
        "--config", "-c", required=config_env is None, default=config_env, help=config_help
    )

    add_admin_commands(sub)
    return parser


class CliError(Exception):
    """A problem to report as one ``plano-fast: error: ...`` line and exit code 1."""


def _error(message: str) -> None:
    print(f"plano-fast: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "usage_command", None) == "reprice":
            return _reprice(args)
        if getattr(args, "admin_action", None):
            return run_admin_command(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "migrate":
            return _migrate(args.config)
        return 2  # pragma: no cover - argparse enforces the choices
    except CliError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the promise: one line, never a traceback
        if os.environ.get("PLANO_FAST_DEBUG") == "1":
            raise
        _error(f"{_one_line(exc)} (PLANO_FAST_DEBUG=1 shows the traceback)")
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load(path: str, *, allow_missing_env: bool = False) -> GatewayConfig | None:
    """The config, or None after printing its errors (one line each: file, field, reason)."""
    try:
        return load_config(path, allow_missing_env=allow_missing_env)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        n = len(exc.errors)
        _error(f"{path}: invalid config ({n} error{'s' if n != 1 else ''})")
        return None


def _refused(unimplemented_line: str) -> str:
    """An unimplemented-field line as a --strict error (nothing is "ignored" there)."""
    return unimplemented_line.removesuffix(" (ignored)")


def _validate(args: argparse.Namespace) -> int:
    path = args.config
    config = _load(path, allow_missing_env=args.allow_missing_env)
    if config is None:
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for line in config.unimplemented:
        print(f"error: {_refused(line)}" if args.strict else f"warning: {line}", file=sys.stderr)
    if args.strict and config.unimplemented:
        n = len(config.unimplemented)
        _error(f"{path}: {n} field{'s' if n != 1 else ''} not implemented (--strict)")
        return 1
    limit_lines = describe_limits(config.raw.get("ratelimits"))
    for limit in limit_lines:
        print(f"rate limit: {limit}")
    if limit_lines:
        print(f"rate-limit headers: {headers_policy(config.settings.ratelimit_headers)}")
    names = ", ".join(p.name for p in config.providers)
    served = config.listener
    providers = f"{len(config.providers)} provider{'s' if len(config.providers) != 1 else ''}"
    print(
        f"{path}: ok ({providers}{': ' + names if names else ''}; serves {served.type} "
        f"listener '{served.name}' on {served.address}:{served.port}"
        + (f"; {len(config.unimplemented)} not implemented" if config.unimplemented else "")
        + ")"
    )
    return 0


def _store_name(config: GatewayConfig) -> str:
    return "PostgreSQL" if config.settings.database_url else f"SQLite {config.settings.sqlite_path}"


def _migrate(path: str) -> int:
    from plano_fast.store import SchemaTooNew
    from plano_fast.store.migrate import run_migrate

    config = _load(path)
    if config is None:
        return 1
    settings = config.settings
    where = _store_name(config)
    try:
        applied = asyncio.run(run_migrate(settings.database_url, settings.sqlite_path))
    except SchemaTooNew as exc:
        raise CliError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - reported as one line
        raise CliError(f"{where}: migration failed: {_one_line(exc)}") from None
    if applied:
        print(f"{where}: applied migrations {', '.join(map(str, applied))}")
    else:
        print(f"{where}: schema up to date")
    return 0


def _store_unavailable_errors() -> tuple[type[BaseException], ...]:
    """What a store that is away *for now* raises on open: refused or reset connections
    (OSError), an unusable SQLite path, and PostgreSQL's own "not now" answers -- a
    server starting up or shutting down (57P03, 57P01/57P02: OperatorInterventionError),
    out of connection slots (53300), or a connection lost during its startup (class 08).
    Anything else (a bad password, a missing database) is the operator's to fix: one line
    and exit."""
    import asyncpg  # type: ignore[import-untyped]

    return (sqlite3.Error, OSError, asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.TooManyConnectionsError, asyncpg.exceptions.PostgresConnectionError)


def _prepare_store(config: GatewayConfig, config_path: str, allow_migrate: bool) -> None:
    """Create or check the schema before listening; CliError when it cannot be served."""
    from plano_fast.store import SchemaTooNew, SchemaTooOld
    from plano_fast.store.migrate import prepare_schema

    settings = config.settings
    where = _store_name(config)
    try:
        applied = asyncio.run(
            prepare_schema(settings.database_url, settings.sqlite_path, allow_migrate=allow_migrate)
        )
    except SchemaTooOld as exc:
        state = "has no plano_fast schema" if exc.current == 0 else f"is at schema version {exc.current}"
        raise CliError(
            f"{where} {state}, this plano-fast needs version {exc.required}: run "
            f"`plano-fast migrate --config {config_path}` (or serve with --migrate)"
        ) from None
    except SchemaTooNew as exc:
        raise CliError(f"{where}: {exc}") from None
    except _store_unavailable_errors() as exc:
        # The store cannot be opened now (PostgreSQL down, starting up or out of
        # connections, an unusable SQLite path): the gateway starts anyway, answers 503
        # (fail closed) and retries until it opens, readying the schema then as here.
        log.warning("%s: cannot open the database now (%s); serving 503 until it opens", where, _one_line(exc))
        return
    if applied:
        log.info("%s: applied migrations %s", where, ", ".join(map(str, applied)))


def _reprice(args: argparse.Namespace) -> int:
    from plano_fast.billing.reprice import run_reprice
    from plano_fast.store import SchemaMismatch

    if not args.config:  # usage errors exit 2, as argparse's do
        _error("usage reprice needs --config (the database to work on)")
        return 2
    if args.page_rows < 1:
        _error("--page-rows must be at least 1")
        return 2
    config = _load(args.config)
    if config is None:
        return 1
    settings = config.settings
    try:
        report = asyncio.run(run_reprice(
            settings.database_url, settings.sqlite_path, settings.price_as,
            page_rows=args.page_rows, dry_run=args.dry_run,
        ))  # fmt: skip
    except SchemaMismatch as exc:
        raise CliError(f"cannot reprice: {_one_line(exc)}") from None
    verb = "would change" if args.dry_run else "changed"
    delta = report.cost_after_nano_usd - report.cost_before_nano_usd
    print(
        f"{report.rows_seen} rows read ({report.rows_rederived} re-derived from their provider "
        f"usage), {report.rows_changed} {verb}; counted cost {delta:+d} nano-USD "
        f"({report.elapsed_s:.2f} s)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.workers < 1:
        raise CliError("--workers must be at least 1")
    config = _load(args.config)
    if config is None:
        return 1
    for warning in config.warnings:
        log.warning("%s", warning)
    for line in config.unimplemented:
        if args.strict:
            print(f"error: {_refused(line)}", file=sys.stderr)
        else:
            log.warning("%s", line)
    if args.strict and config.unimplemented:
        n = len(config.unimplemented)
        raise CliError(f"{args.config}: {n} field{'s' if n != 1 else ''} not implemented (--strict)")
    host = args.host or config.listener.address
    port = args.port if args.port is not None else config.listener.port
    _prepare_store(config, args.config, args.migrate)
    if args.workers == 1:
        return _run_worker(config, host, port, reuse_port=False)
    return _run_workers(args, config, host, port)


def _run_worker(
    config: GatewayConfig, host: str, port: int, reuse_port: bool, on_ready: Callable[[], None] | None = None
) -> int:
    import uvloop

    return int(uvloop.run(_serve_until_signal(config, host, port, reuse_port, on_ready)))


async def _serve_until_signal(
    config: GatewayConfig, host: str, port: int, reuse_port: bool, on_ready: Callable[[], None] | None = None
) -> int:
    from plano_fast.app import Gateway

    from plano_fast.app import AdminKeyMissing
    from plano_fast.managed.crypto import MasterKeyError
    from plano_fast.store import SchemaMismatch

    try:
        gateway = Gateway(config, host=host, port=port, reuse_port=reuse_port)
    except (MasterKeyError, AdminKeyMissing) as exc:
        raise CliError(f"cannot start: {exc}") from None
    try:
        await gateway.start()
    except SchemaMismatch as exc:
        raise CliError(f"cannot start: {exc}") from None
    except OSError as exc:  # the port is taken, the address is not ours...
        raise CliError(f"cannot start: {_one_line(exc)}") from None
    # Everything loaded so far (modules, config, price tables: ~60k objects) lives as long
    # as the process.  Frozen, the collector's full passes skip it: unfrozen, one full pass
    # measured 15-30 ms, all of it a stall for every request in flight.
    gc.collect()
    gc.freeze()
    # One line a supervisor or test can wait for.
    print(
        f"plano_fast listening on {gateway.host}:{gateway.port} "
        f"(pid {os.getpid()}, scanner: {wire.IMPLEMENTATION})"
        + (f"; admin API on {config.settings.admin_address}:{gateway.admin_port}"
           if gateway.admin_port else ""),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    await gateway.stop()
    return 0


def _worker_entry(config_path: str, host: str, port: int, admin_port: int | None, ready: Connection) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_ready() -> None:
        try:
            ready.send_bytes(b"1")
            ready.close()
        except OSError:
            pass  # the parent is gone; nothing to tell

    try:
        config = load_config(config_path)
        if admin_port is not None and admin_port != config.settings.admin_port:
            # admin_port 0: resolved once by the parent, so every worker (a restarted one
            # too) serves the admin API on the same port
            settings = config.settings.model_copy(update={"admin_port": admin_port})
            config = dataclasses.replace(config, settings=settings)
        code = _run_worker(config, host, port, reuse_port=True, on_ready=on_ready)
    except CliError as exc:
        _error(str(exc))
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # noqa: BLE001 - one line, as in main()
        if os.environ.get("PLANO_FAST_DEBUG") == "1":
            raise
        _error(_one_line(exc))
        code = 1
    raise SystemExit(code)


#: Worker supervision (``serve --workers N``): a worker that dies after it was ready is
#: restarted after ``RESTART_MIN_S``; one that dies again within ``STABLE_UPTIME_S`` of its
#: start (a crash loop) waits twice as long as the last time, up to ``RESTART_MAX_S``.
RESTART_MIN_S: Final = 0.5
RESTART_MAX_S: Final = 30.0
STABLE_UPTIME_S: Final = 30.0


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Slot:
    """One worker place of ``--workers N``: its current process and its restart state."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: BaseProcess | None = None
        self.ready: Connection | None = None  # read end; closed once the worker said ready
        self.was_ready = False
        self.started_at = 0.0
        self.generation = 0
        self.delay_s = 0.0  # the last restart delay (crash-loop back-off)
        self.restart_at: float | None = None


def _run_workers(args: argparse.Namespace, config: GatewayConfig, host: str, port: int) -> int:
    """Run ``args.workers`` worker processes and keep that many running until SIGTERM/SIGINT.

    The parent binds the listening port (and the admin port) once, so port 0 resolves to one
    port every worker shares with ``SO_REUSEPORT`` and a restarted worker binds it again.
    A worker that dies (SIGKILL, a crash) is logged and replaced, with a back-off against
    crash loops; a worker that fails before it was ever ready in the first start (a bad
    master key, the port taken) stops the instance, as a single worker would.  The dead
    worker's metrics snapshot keeps its counters (they must not go backwards) and loses its
    gauges; its journal is replayed by its replacement as it starts (``Journal.claim``) and
    its reservations released by the reservation sweepers (a stale heartbeat).  SIGTERM/SIGINT are forwarded to every
    worker: the parent exits once all have stopped, within the workers' own bound.
    """
    # Bind once here to resolve port 0 and to fail fast when the port is taken; the
    # workers bind the same port with SO_REUSEPORT and the kernel balances between them.
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    probe.bind((host, port))
    port = probe.getsockname()[1]
    probes = [probe]
    admin_port = config.settings.admin_port
    if admin_port == 0 and config.settings.admin_key:
        admin_host = config.settings.admin_address
        admin_probe = socket.socket(socket.AF_INET6 if ":" in admin_host else socket.AF_INET)
        admin_probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        admin_probe.bind((admin_host, 0))
        admin_port = admin_probe.getsockname()[1]
        probes.append(admin_probe)
    # The workers publish their metrics here; a scrape of any one of them adds them up.
    metrics_dir = tempfile.mkdtemp(prefix="plano_fast_metrics_")
    os.environ["PLANO_FAST_METRICS_DIR"] = metrics_dir  # plano_fast.app.METRICS_DIR_ENV
    from plano_fast.ratelimit import prepare_shared

    prepare_shared(config.raw.get("ratelimits"), config.settings.redis_url, metrics_dir)
    ctx = multiprocessing.get_context("spawn")
    slots = [_Slot(i) for i in range(args.workers)]
    stopping: list[int] = []  # the signal that stops the instance, once received

    def start(slot: _Slot) -> None:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker_entry, args=(args.config, host, port, admin_port, writer), daemon=False
        )
        proc.start()
        writer.close()
        slot.proc, slot.ready, slot.was_ready = proc, reader, False
        slot.started_at = time.monotonic()
        slot.restart_at = None
        if stopping and proc.pid is not None:
            os.kill(proc.pid, stopping[0])  # the stop arrived while it was being started
        if slot.generation:
            log.warning("worker %d restarted (pid %d)", slot.index, proc.pid)

    def forward(signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(signum)
        for slot in slots:
            proc = slot.proc
            if proc is not None and proc.pid is not None and proc.exitcode is None:
                try:
                    os.kill(proc.pid, signum)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in slots:
        start(slot)
    code = 0
    try:
        code = _supervise(slots, start, stopping, Path(metrics_dir))
    finally:
        for p in probes:
            p.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def _supervise(
    slots: list[_Slot], start: Callable[[_Slot], None], stopping: list[int], metrics_dir: Path
) -> int:
    """The parent's loop: note ready workers, replace dead ones, return once all stopped."""
    from plano_fast.metrics import retire_snapshot

    while True:
        waits: list[Any] = []
        for slot in slots:
            if slot.proc is not None:
                waits.append(slot.proc.sentinel)
            if slot.ready is not None:
                waits.append(slot.ready)
        now = time.monotonic()
        pending = [s.restart_at for s in slots if s.restart_at is not None]
        timeout = 0.5 if not pending else max(0.0, min(min(pending) - now, 0.5))
        if waits:
            mp_wait(waits, timeout)  # a signal handler runs meanwhile (PEP 475 retries)
        elif not pending:
            break
        else:
            time.sleep(timeout)
        for slot in slots:
            if slot.ready is not None and slot.ready.poll():
                try:
                    slot.was_ready = slot.ready.recv_bytes() == b"1" or slot.was_ready
                except (EOFError, OSError):
                    pass
                slot.ready.close()
                slot.ready = None
            proc = slot.proc
            if proc is None or proc.exitcode is None:
                continue
            proc.join()
            slot.proc = None
            if slot.ready is not None:
                slot.ready.close()
                slot.ready = None
            if proc.pid is not None:
                retire_snapshot(metrics_dir, proc.pid)
            if stopping:
                continue
            if slot.generation == 0 and not slot.was_ready:
                # Failed at the first start (its one-line error is on stderr): the instance
                # cannot serve as configured, so it stops rather than retry forever.
                log.error("worker %d failed to start (%s); stopping", slot.index, _exit_text(proc.exitcode))
                stopping.append(signal.SIGTERM)
                for other in slots:
                    if other.proc is not None and other.proc.pid is not None and other.proc.exitcode is None:
                        os.kill(other.proc.pid, signal.SIGTERM)
                return_code = proc.exitcode or 1
                _wait_all(slots, metrics_dir)
                return return_code
            uptime = time.monotonic() - slot.started_at
            if uptime < STABLE_UPTIME_S or not slot.was_ready:
                slot.delay_s = min(RESTART_MAX_S, max(RESTART_MIN_S, slot.delay_s * 2))
            else:
                slot.delay_s = RESTART_MIN_S
            slot.restart_at = time.monotonic() + slot.delay_s
            log.warning(
                "worker %d (pid %d) died (%s) after %.1f s; restarting in %.1f s",
                slot.index, proc.pid, _exit_text(proc.exitcode), uptime, slot.delay_s,
            )  # fmt: skip
        if stopping:
            for slot in slots:
                slot.restart_at = None
            if all(slot.proc is None for slot in slots):
                return 0
            continue
        now = time.monotonic()
        for slot in slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                slot.generation += 1
                start(slot)
    return 0


def _wait_all(slots: list[_Slot], metrics_dir: Path) -> None:
    from plano_fast.metrics import retire_snapshot

    for slot in slots:
        if slot.proc is not None:
            slot.proc.join()
            if slot.proc.pid is not None:
                retire_snapshot(metrics_dir, slot.proc.pid)
            slot.proc = None

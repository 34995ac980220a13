"""Command line: ``plano-fast serve | validate``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence

from plano_fast import __version__
from plano_fast import scan
from plano_fast.admin_client import add_admin_commands, run_admin_command
from plano_fast.config import ConfigError, GatewayConfig, load_config

log = logging.getLogger("plano_fast")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plano-fast", description="A fast LLM API gateway.")
    parser.add_argument("--version", action="version", version=f"plano-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", "-c", required=True, help="plano_config.yaml")
    serve.add_argument("--host", help="listen address (default: the listener's address)")
    serve.add_argument("--port", type=int, help="listen port (default: the listener's port)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    serve.add_argument("--log-level", default=os.environ.get("PLANO_FAST_LOG_LEVEL", "INFO"))

    validate = sub.add_parser("validate", help="check a config file without starting")
    validate.add_argument("config")

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument("--config", "-c", required=True, help="plano_config.yaml")

    add_admin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "admin_action", None):
        return run_admin_command(args)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "serve":
        return _serve(args)
    if args.command == "migrate":
        return _migrate(args.config)
    return 2  # pragma: no cover - argparse enforces the choices


def _validate(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    names = ", ".join(p.name for p in config.providers)
    print(f"{path}: ok ({len(config.providers)} providers: {names})")
    return 0


def _migrate(path: str) -> int:
    from plano_fast.store.migrate import run_migrate

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 1
    settings = config.settings
    applied = asyncio.run(run_migrate(settings.database_url, settings.sqlite_path))
    where = "PostgreSQL" if settings.database_url else settings.sqlite_path
    if applied:
        print(f"{where}: applied migrations {', '.join(map(str, applied))}")
    else:
        print(f"{where}: schema up to date")
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        log.warning("%s", warning)
    host = args.host or config.listener.address
    port = args.port if args.port is not None else config.listener.port
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers == 1:
        return _run_worker(config, host, port, reuse_port=False)
    return _run_workers(args, config, host, port)


def _run_worker(config: GatewayConfig, host: str, port: int, reuse_port: bool) -> int:
    import uvloop

    return int(uvloop.run(_serve_until_signal(config, host, port, reuse_port)))


async def _serve_until_signal(config: GatewayConfig, host: str, port: int, reuse_port: bool) -> int:
    from plano_fast.app import Gateway

    from plano_fast.app import AdminKeyMissing
    from plano_fast.managed.crypto import MasterKeyError
    from plano_fast.store import SchemaTooOld

    try:
        gateway = Gateway(config, host=host, port=port, reuse_port=reuse_port)
    except (MasterKeyError, AdminKeyMissing) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        await gateway.start()
    except SchemaTooOld as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    # Everything loaded so far (modules, config, price tables: ~60k objects) lives as long
    # as the process.  Frozen, the collector's full passes skip it: unfrozen, one full pass
    # measured 15-30 ms, all of it a stall for every request in flight.
    gc.collect()
    gc.freeze()
    # One line a supervisor or test can wait for.
    print(
        f"plano_fast listening on {gateway.host}:{gateway.port} "
        f"(pid {os.getpid()}, scanner: {scan.IMPLEMENTATION})"
        + (f"; admin API on {config.settings.admin_address}:{gateway.admin_port}"
           if gateway.admin_port else ""),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    await gateway.stop()
    return 0


def _worker_entry(config_path: str, host: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path)
    raise SystemExit(_run_worker(config, host, port, reuse_port=True))


def _run_workers(args: argparse.Namespace, config: GatewayConfig, host: str, port: int) -> int:
    # Bind once here to resolve port 0 and to fail fast when the port is taken; the
    # workers bind the same port with SO_REUSEPORT and the kernel balances between them.
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    probe.bind((host, port))
    port = probe.getsockname()[1]
    # The workers publish their metrics here; a scrape of any one of them adds them up.
    metrics_dir = tempfile.mkdtemp(prefix="plano_fast_metrics_")
    os.environ["PLANO_FAST_METRICS_DIR"] = metrics_dir  # plano_fast.app.METRICS_DIR_ENV
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_entry, args=(args.config, host, port), daemon=False)
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for proc in procs:
        proc.join()
        code = code or (proc.exitcode or 0)
    probe.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return code

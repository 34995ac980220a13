"""The application object: owns the listener, the pools, and every background task.

Start order: router -> upstream pool -> listener.  Stop order (ARCHITECTURE.md rule 4):
stop accepting -> drain in-flight requests (streams included) within the drain timeout ->
flush usage -> close pools.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plano_fast.access_log import AccessLog, refusal_record
from plano_fast import guardrails, ratelimit
from plano_fast.guard_checks import parse_checks
from plano_fast.guard_models import Guards
from plano_fast.billing.pipeline import BillingPipeline
from plano_fast.config.retry_schema import retry_policy_of
from plano_fast.deadlines import DeadlineClock, tick_for
from plano_fast.failover import RetryPolicy, circuit_views
from plano_fast.errors import GatewayError, UpstreamError
from plano_fast.gateway.dispatch import admit_path, dispatch, precheck
from plano_fast.metrics import Merged, billing_snapshot, read_snapshots, render, write_snapshot
from plano_fast.gateway.relay import Exchange, ExchangeContext, new_request_id
from plano_fast.key_registry import ApiKeyRegistry
from plano_fast.http_server import Request, Responder, ServerLimits, ServerProtocol
from plano_fast.routing import Router
from plano_fast.responses_state import store_from_config
from plano_fast.store import SchemaMismatch, SchemaTooNew, SchemaTooOld, Store, open_store
from plano_fast.store.migrate import prepare_schema
from plano_fast.upstream import UpstreamPool

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from aiohttp import web

    from plano_fast.managed.context import ManagedContext
    from plano_fast.managed.crypto import KeyCipher

    from plano_fast.config import GatewayConfig
    from plano_fast.store import RegisteredApiKey

log = logging.getLogger("plano_fast")

STORE_OPEN_TIMEOUT_S = 10.0
"""Bound on one attempt to open the store and check its schema (a hanging database)."""
STORE_RETRY_FIRST_S = 0.5
STORE_RETRY_MAX_S = 5.0
"""Back-off between attempts to open a store that was away at start: 0.5 s doubling to 5 s."""
STORE_CLOSE_TIMEOUT_S = 5.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


async def _close_bounded(store: Store) -> None:
    """Close ``store`` within ``STORE_CLOSE_TIMEOUT_S``; a failure to close is only logged."""
    try:
        async with asyncio.timeout(STORE_CLOSE_TIMEOUT_S):
            await store.close()
    except Exception as exc:  # noqa: BLE001 - closing what failed to open: nothing to keep
        log.warning("closing the store failed: %s", _one_line(exc))


class Gateway:
    """One gateway process: listener, exchange context, background tasks."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        host: str | None = None,
        port: int | None = None,
        reuse_port: bool = False,
        store: Store | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        settings = config.settings
        #: this process in the shared store: owner of its reservations, heartbeat key
        self.instance_id = uuid.uuid4().hex
        self._started_ns = time.time_ns()
        self.host = host if host is not None else config.listener.address
        self.port = port if port is not None else config.listener.port
        self.reuse_port = reuse_port
        self._sock = sock
        self.limits = ServerLimits(
            max_header_bytes=settings.max_header_bytes,
            max_body_bytes=settings.max_body_bytes,
            request_head_timeout_s=settings.request_head_timeout_s,
            request_body_timeout_s=config.listener.timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
        )
        self.router = Router(config)
        self.store = store or open_store(
            settings.database_url, settings.sqlite_path,
            # (the loader allows false with a PostgreSQL database_url only)
            **({} if settings.usage_synchronous_commit else {"usage_synchronous_commit": False}),
        )
        self.billing = BillingPipeline(self.store, settings)
        self.firewall = settings.mode == "firewall"
        self.registry = ApiKeyRegistry(self.store, settings.key_registry_reload_s)
        self.managed: ManagedContext | None = None
        if settings.managed:
            # Imported here, as the admin API, preference routing and tracing below: a
            # gateway loads only what its configuration uses (cryptography, aiohttp, the
            # OpenTelemetry SDK: ~0.25 s of a start's CPU), so it restarts faster.
            from plano_fast.managed.context import ManagedContext
            from plano_fast.managed.crypto import KeyCipher
            from plano_fast.managed.state import ManagedState

            # Refuses to construct without PLANO_FAST_MASTER_KEY (MasterKeyError).
            state = ManagedState(
                self.store, KeyCipher.from_env(), config, reload_interval_s=settings.managed_reload_s
            )
            self.managed = ManagedContext(
                state,
                self.store,
                self.billing.pricing,
                max_output_tokens=settings.managed_max_output_tokens,
                usage_sink=self.billing.submit,
                metrics=self.billing.metrics,
                reservation_ttl_s=settings.managed_reservation_ttl_s,
                retry_policy=(
                    retry_policy_of(settings.managed_retry_policy)
                    if settings.managed_retry_policy is not None else None
                ),
            )
            self.managed.owner = self.instance_id
            from plano_fast.managed.settle_journal import SettleJournal

            #: settles a stop could not finish, for the next start on this host
            self.kept_settles = SettleJournal(settings.usage_journal_path)
        self.connections: set[ServerProtocol] = set()
        #: shared by the workers of one instance (set by the parent of --workers N)
        metrics_dir = os.environ.get(METRICS_DIR_ENV)
        self.metrics_dir = Path(metrics_dir) if metrics_dir else None
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: False until the store has opened and billing started: forwarded requests get 503
        self.store_ready = False
        self._store_task: asyncio.Task[None] | None = None
        self.models_body = json.dumps(
            {"object": "list", "data": self.router.models_list()}, separators=(",", ":")
        ).encode()
        self.pool: UpstreamPool
        self.clock: DeadlineClock
        self.ctx: ExchangeContext
        self.admin_runner: web.AppRunner | None = None
        self.admin_port: int | None = None
        self._admin_key: str | None = None
        if settings.admin_port is not None:
            from plano_fast.admin import is_loopback

            self._admin_key = settings.admin_key or os.environ.get("PLANO_FAST_ADMIN_KEY")
            if not self._admin_key:
                raise AdminKeyMissing(
                    "plano_fast.admin_port is set but no admin key: set plano_fast.admin_key "
                    "(e.g. $PLANO_FAST_ADMIN_KEY) — the admin API never runs unauthenticated"
                )
            if not is_loopback(settings.admin_address) and len(self._admin_key) < MIN_EXPOSED_ADMIN_KEY_CHARS:
                raise AdminKeyMissing(
                    f"plano_fast.admin_address {settings.admin_address} is not loopback: the admin "
                    f"key must be at least {MIN_EXPOSED_ADMIN_KEY_CHARS} characters (e.g. "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store (refusing an old schema), start billing, then listen.

        A store that cannot be reached at start (PostgreSQL down, an unusable SQLite path)
        does not stop the gateway: it listens anyway, every forwarded request gets 503 in
        its client's format (fail closed, nothing forwarded), and ``_open_store_retrying``
        tries again with back-off, one log line per attempt; once the store opens, billing,
        the key registry, budgets and managed state load and requests are served.  An old
        schema found at start is still refused at once (an operator's error, not a fault).
        """
        settings = self.config.settings
        try:
            await self._open_store()
            opened = True
        except SchemaMismatch:
            raise
        except Exception as exc:  # noqa: BLE001 - any reason the store is away: retry it
            opened = False
            log.warning("store unavailable at start (%s); serving 503 until it opens, retrying in %.1fs",
                        _one_line(exc), STORE_RETRY_FIRST_S)
        if opened:
            await self._start_billing()
        timeout_s = self.config.listener.timeout_s
        timeouts = self.config.upstream_timeouts  # (connect, first byte, body idle)
        limits = self.limits
        self.clock = DeadlineClock(
            tick_for(
                limits.request_head_timeout_s,
                limits.request_body_timeout_s,
                limits.keepalive_timeout_s,
                timeout_s,
                *timeouts[1:],
                # a provider's own first-byte / body-idle timeouts fire within a tick too
                *(t for p in self.config.providers for t in p.timeouts[1:]),
            )
        )
        self.clock.start()
        self.pool = UpstreamPool(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            idle_timeout_s=settings.upstream_idle_timeout_s,
            max_idle_per_origin=settings.upstream_pool_max_idle_per_origin,
            dns_ttl_s=settings.dns_ttl_s,
            clock=self.clock,
        )
        self.ctx = ExchangeContext(
            self.router,
            self.pool,
            # the flusher's own method: one frame fewer a request than the pipeline's
            # ``submit``, which only calls it
            self.billing.flusher.submit,
            timeouts,
            registry=self.registry,
            budget=self.billing.budget,
            gone_drain_s=settings.client_gone_drain_s,
            gone_drain_bytes=settings.client_gone_drain_bytes,
            unbilled_paths=frozenset(p.encode() for p in settings.firewall_unbilled_paths),
            default_retry_policy=listener_retry_policy(self.config.listener.max_retries),
        )
        self.ctx.circuit_failure_threshold = settings.circuit_failure_threshold
        self.ctx.circuit_cooldown_s = settings.circuit_cooldown_s
        self.ctx.responses_state = store_from_config(
            self.config.raw, sqlite_path=settings.sqlite_path, database_url=settings.database_url
        )
        if settings.access_log is not None:
            self.ctx.access_log = AccessLog(settings.access_log)
            self.ctx.access_log.start()
        self.ctx.server_timing = settings.server_timing
        self.ctx.request_metrics = settings.request_metrics or self.config.preference_routing is not None
        self.ctx.guardrails = guardrails.parse_policy(settings.guardrails)
        checks = parse_checks(self.config.raw, settings, self.config.listener.loc)
        if checks.guards:
            self.ctx.guards = Guards(checks.guards, self.pool, self.billing.submit, self.ctx.metrics)
        self.ctx.filter_chains = checks.chains
        self.ctx.prechecks = checks.prechecks
        self.ctx.response_checks = checks.response_checks()
        self.ctx.ratelimits = ratelimit.build(
            self.config.raw.get("ratelimits"), settings.redis_url,
            settings.ratelimit_on_backend_error == "fail_open",
            str(self.metrics_dir) if self.metrics_dir else None,  # the workers' shared directory
            settings.ratelimit_headers,
        )  # fmt: skip
        if self.config.preference_routing is not None:
            from plano_fast.preference_routing import PreferenceRouter

            self.ctx.preference = PreferenceRouter(
                self.config.preference_routing, self.router, self.pool,
                self.billing.pricing, self.ctx.metrics, self.billing.submit,
            )  # fmt: skip
            self.ctx.preference.start()
        tracing = self.config.raw.get("tracing")
        if isinstance(tracing, dict):
            from plano_fast.tracing import Tracing

            self.ctx.tracing = Tracing(tracing)
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(self._protocol_factory, sock=self._sock)
        else:
            self._server = await loop.create_server(
                self._protocol_factory,
                self.host,
                self.port,
                reuse_port=self.reuse_port or None,
                backlog=2048,
            )
        self.port = self._server.sockets[0].getsockname()[1]
        if self._admin_key is not None and settings.admin_port is not None:
            from plano_fast.admin import create_admin_app, start_admin_server

            app = create_admin_app(_GatewayAdmin(self), admin_key=self._admin_key)
            self.admin_runner, self.admin_port = await start_admin_server(
                app, settings.admin_address, settings.admin_port, reuse_port=self.reuse_port
            )
        self._tasks.append(loop.create_task(self._housekeeping()))
        if not opened:
            self._store_task = loop.create_task(self._open_store_retrying(), name="store-open")
        log.info("listening on %s:%d", self.host, self.port)

    async def _open_store(self) -> None:
        """One bounded attempt to open the store and check its schema; closed on failure."""
        try:
            async with asyncio.timeout(STORE_OPEN_TIMEOUT_S):
                await self.store.open()
                await self.store.check_schema()
        except BaseException:
            await _close_bounded(self.store)
            raise

    async def _start_billing(self) -> None:
        """Billing, key registry, budgets and managed state, once the store is open.

        Each of them tolerates a store that fails again right away (not ready: 503, their
        own loops retry), so this never raises for a store fault.
        """
        await self.billing.start()
        if self.firewall:
            await self.registry.start()
        if self.managed is not None:
            try:
                await self._heartbeat()
            except Exception as exc:  # noqa: BLE001 - the sweeper retries it
                log.warning("instance heartbeat failed: %s", _one_line(exc))
            # Before the sweeper: a reservation kept with its row by a stop is settled, not
            # released before its row's cost is counted.
            await self._settle_kept()
            await self.managed.state.start()
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._sweep_reservations(), name="reservation-sweeper"))
        self.store_ready = True

    async def _heartbeat(self, alive_until_ns: int | None = None) -> None:
        await self.store.heartbeat(self.instance_id, socket.gethostname(), os.getpid(), self._started_ns,
                                   alive_until_ns)

    async def _settle_kept(self) -> None:
        """The settles earlier processes on this host kept at their stop, settled; their
        instances, once all settled, forgotten (their other reservations are orphans)."""
        from plano_fast.managed.settle_journal import settle_kept

        assert self.managed is not None
        try:
            owners = await settle_kept(self.managed, self.kept_settles, STORE_CLOSE_TIMEOUT_S)
            for owner in owners:
                async with asyncio.timeout(STORE_CLOSE_TIMEOUT_S):
                    await self.store.forget_instance(owner)
        except Exception as exc:  # noqa: BLE001 - a kept instance's vouch expires instead
            log.warning("settling the kept settles: %s", _one_line(exc))

    async def _vouch(self, bound_s: float) -> None:
        """Before a stop cancels anything: this instance vouches for its reservations until
        the last of them can expire, so no other instance's sweeper takes them for orphans
        while this one may hold a settle's row it could not write (a cancelled settle,
        kept for the next start: ``plano_fast.managed.settle_journal``).  The stop withdraws
        the vouch (``forget_instance``) when it kept nothing; a stop that cannot reach the
        store leaves its reservations to their expiry, not to the stale-heartbeat rule."""
        if not self.store_ready:
            return
        until_ns = time.time_ns() + int(self.config.settings.managed_reservation_ttl_s * 1e9)
        try:
            async with asyncio.timeout(bound_s):
                await self._heartbeat(until_ns)
        except Exception as exc:  # noqa: BLE001 - the heartbeat goes stale instead
            log.warning("could not vouch for this instance's reservations: %s", _one_line(exc))

    async def _sweep_reservations(self) -> None:
        """Managed mode, on every instance: heartbeat, then release reservations past their
        expiry and those of instances whose heartbeat is ``3 * interval`` old (killed).

        Bound: a reservation left by a killed instance is released within about
        4 sweep intervals (3 to go stale + 1 until the next sweep), one left by any other
        failure within its expiry + 1 interval.
        """
        interval_s = self.config.settings.reservation_sweep_interval_s
        while True:
            await asyncio.sleep(interval_s)
            try:
                async with asyncio.timeout(max(interval_s, STORE_CLOSE_TIMEOUT_S)):
                    await self._heartbeat()
                    await self.sweep_reservations()
            except Exception as exc:  # noqa: BLE001 - one line, next interval retries
                log.warning("reservation sweep failed: %s", _one_line(exc))

    async def sweep_reservations(self, now_ns: int | None = None) -> None:
        """One sweep (``_sweep_reservations``) as at ``now_ns`` (default: now)."""
        interval_s = self.config.settings.reservation_sweep_interval_s
        now = time.time_ns() if now_ns is None else now_ns
        expired = await self.store.release_expired(now)
        orphaned = await self.store.release_orphaned(now - int(3 * interval_s * 1e9), now)
        if expired or orphaned:
            log.warning("reservation sweep released %d expired and %d orphaned reservations",
                        expired, orphaned)

    async def _open_store_retrying(self) -> None:
        delay_s = STORE_RETRY_FIRST_S
        attempt = 1
        while True:
            await asyncio.sleep(delay_s)
            attempt += 1
            try:
                # As `serve` does before it listens: a new embedded SQLite database gets
                # the schema; an older or newer one is refused (SchemaMismatch, logged with the hint).
                async with asyncio.timeout(STORE_OPEN_TIMEOUT_S):
                    await prepare_schema(self.config.settings.database_url, self.config.settings.sqlite_path)
                await self._open_store()
            except Exception as exc:  # noqa: BLE001 - one line per attempt, no traceback
                delay_s = min(delay_s * 2, STORE_RETRY_MAX_S)
                hint = (" (run `plano-fast migrate`)" if isinstance(exc, SchemaTooOld)
                        else " (run the release that migrated it)" if isinstance(exc, SchemaTooNew) else "")
                log.warning("store still unavailable (attempt %d: %s)%s; retrying in %.1fs",
                            attempt, _one_line(exc), hint, delay_s)
                continue
            try:
                await self._start_billing()
            except Exception as exc:  # noqa: BLE001 - never a lost task: logged, retried
                log.error("starting billing failed (%s); retrying", _one_line(exc))
                await _close_bounded(self.store)
                continue
            log.info("store opened after %d attempts: serving", attempt)
            return

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Graceful stop: refuse new connections, let in-flight exchanges finish."""
        if drain_timeout_s is None:
            drain_timeout_s = self.config.settings.drain_timeout_s
        if self._server is not None:
            self._server.close()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
            self.admin_runner = None
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        # Responses still read for clients that left (their usage) drain too.
        while (self.connections or self.ctx.draining) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        # Requests waiting with nothing at a provider (connecting, backoff, guard model):
        # by their responders, for the connections below.
        waiting = {exchange.responder: (exchange, task) for exchange, task in self.ctx.waiting.items()}
        for conn in list(self.connections):
            if not _stop_unanswered(conn, waiting):  # (answered 503: it closes once that is out)
                conn.abort()
        # An aborted connection's connection_lost runs in a later loop turn: only then
        # does an exchange still relaying learn its client is gone (and join ``draining``,
        # or have its task cancelled, whose handler does).  Given up before that, those
        # exchanges -- the streams the drain timeout cut -- never settled: no usage row.
        for _ in range(100):  # (bounded: a turn per step, each connection gone in one)
            if not self.connections:
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the cancelled tasks' handlers
        self.ctx.give_up_drains()
        background = list(self._tasks)
        if self._store_task is not None:
            background.append(self._store_task)
            self._store_task = None
        self._tasks.clear()
        for task in background:
            task.cancel()
        # A task cancelled inside a store call that hangs is not waited for: the store
        # phase below is bounded and ends by dropping the connections.
        if background:
            await asyncio.wait(background, timeout=1.0)
        self.pool.close()
        self.clock.stop()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Every exchange has settled: drain the usage queue, then close the store, within
        # ``store_stop_timeout_s`` whatever the database does (refuses, hangs, half-answers):
        # SIGTERM -> exit within drain_timeout_s + this + ~2 s of task cancellation.
        bound_s = self.config.settings.store_stop_timeout_s
        phase = loop.create_task(self._stop_store_phase(bound_s), name="stop-store")
        done, _ = await asyncio.wait({phase}, timeout=bound_s)
        if done:
            await self._stop_observability()
            phase.result()
            return
        log.error("the store did not finish within %gs of the drain: connections dropped", bound_s)
        self.store.terminate()
        leftovers: list[asyncio.Task[Any]] = [phase, *background]
        if self.managed is not None:
            leftovers += self.managed.tasks
        for task in leftovers:
            task.cancel()
        # One turn for their handlers (a cancelled settle queues its row), then journal.
        await asyncio.wait(leftovers, timeout=1.0)
        if self.managed is not None:
            for event in self.managed.writer.abandon():
                self.billing.submit(event)
            from plano_fast.managed.settle_journal import keep

            keep(self.managed, self.kept_settles)
        spilled = self.billing.flusher.spill_all()
        log.error("%d unwritten usage rows kept in %s (replayed at the next start)",
                  spilled, self.billing.journal.path)
        await self._stop_observability()

    async def _stop_store_phase(self, bound_s: float) -> None:
        await self.registry.stop()
        if self.managed is not None:
            await self._vouch(bound_s / 8)
            await self._stop_managed(bound_s / 4)
        await self.billing.stop(drain_deadline_s=bound_s / 2)
        if self.managed is not None:
            await self._finish_settles(bound_s / 8)
        await self.store.close()

    async def _stop_observability(self) -> None:
        """After the store phase, whatever its outcome (local work, not the database's)."""
        if hasattr(self, "ctx"):  # started
            self._publish_metrics()
            if self.ctx.access_log is not None:
                await self.ctx.access_log.stop()
            if self.ctx.ratelimits is not None:
                await self.ctx.ratelimits.backend.close()
            if self.ctx.preference is not None:
                await self.ctx.preference.close()
            if self.ctx.responses_state is not None:
                await self.ctx.responses_state.close()
            if self.ctx.tracing is not None:
                self.ctx.tracing.shutdown()  # exports what is left (bounded by the exporter timeout)

    async def _stop_managed(self, tasks_bound_s: float) -> None:
        """Background settles and releases get a bounded time; a settle cut is kept
        (``ManagedContext.unsettled``, then ``_finish_settles``); a release cut is left to
        the sweepers (at the reservation's expiry: this instance vouched for it)."""
        assert self.managed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + tasks_bound_s
        # Until none is left: a task may start another as it ends (a reservation the store
        # granted to a request that stopped waiting is then given back).
        while tasks := list(self.managed.tasks):
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if pending:
                break
        await self.managed.state.stop()

    async def _finish_settles(self, bound_s: float) -> None:
        """After the usage drain: the settles the stop cancelled tried once more, those the
        store does not take kept on disk (their reservations stay held and vouched for);
        only when none is kept is this instance forgotten (its leftovers orphans at once)."""
        from plano_fast.managed.settle_journal import finish_or_keep

        assert self.managed is not None
        if await finish_or_keep(self.managed, self.kept_settles, bound_s):
            return
        if self.store_ready:
            try:
                async with asyncio.timeout(STORE_CLOSE_TIMEOUT_S):
                    await self.store.forget_instance(self.instance_id)
            except Exception as exc:  # noqa: BLE001 - the vouch expires instead
                log.warning("could not deregister this instance: %s", _one_line(exc))

    def metrics_snapshot(self) -> dict[str, Any]:
        """This process's numbers, as plano_fast.metrics adds them up."""
        billing = self.billing.metrics
        return {
            **self.ctx.metrics.snapshot(),
            **billing_snapshot(billing.cost_nano_usd, billing.flush_row),
            "process": self.process_metrics(),
        }

    def process_metrics(self) -> dict[str, float]:
        """This process's counters and gauges (names without the plano_fast_ prefix)."""
        gw = self
        values: dict[str, float] = dict(gw.billing.metrics.as_dict())
        values["last_flush_s"] = gw.billing.metrics.last_flush_s
        values["usage_backlog"] = gw.billing.flusher.backlog
        values["client_connections"] = len(gw.connections)
        pool = gw.pool
        idle = pool.idle_count
        values["upstream_pool_idle"] = idle
        values["upstream_connections_opened"] = pool.connections_opened
        values["upstream_open_connections"] = pool.connections_opened - pool.connections_closed
        values["upstream_busy_connections"] = pool.connections_opened - pool.connections_closed - idle
        values["requests_in_flight_current"], values["streams_in_flight_current"] = in_flight(gw.connections)
        values["key_registry_size"] = len(gw.registry)
        values["requests_unbilled"] = gw.ctx.unbilled_requests
        values["upstream_retries"] = gw.ctx.retries_total
        values["upstream_failovers"] = gw.ctx.failovers_total
        values["requests_retried"] = gw.ctx.requests_retried
        values["upstream_attempts_failed"] = gw.ctx.attempts_failed
        values["upstream_hedges"] = gw.ctx.hedges_total
        values["upstream_hedges_won"] = gw.ctx.hedges_won
        values["upstream_hedges_lost"] = gw.ctx.hedges_lost
        now = gw.pool.loop.time()
        circuits = gw.ctx.circuits.values()
        values["circuits_open_current"] = sum(1 for c in circuits if c.state(now) == "open")
        values["circuit_opens"] = sum(c.opens for c in circuits)
        limits = gw.ctx.ratelimits
        if limits is not None:
            values["ratelimit_refused"] = limits.refused
            backend = limits.backend
            redis = backend if isinstance(backend, ratelimit.RedisBackend) else None
            shared = None if isinstance(backend, ratelimit.MemoryBackend) else backend
            values["ratelimit_backend_errors"] = shared.errors if shared is not None else 0
            # 1 while this process finds the shared rate-limit state unreachable
            values["ratelimit_backend_down"] = 1 if redis is not None and redis.down else 0
        values["blocked_scopes_current"] = len(gw.billing.budget.blocked)
        preference = gw.ctx.preference
        if preference is not None:
            values["router_calls"] = preference.calls
            values["router_failures"] = preference.failures
            values["router_session_pins"] = preference.pinned_hits
            if preference.redis is not None:
                values["router_session_cache_errors"] = preference.redis.errors
            if preference.model_metrics is not None:
                values["model_metrics_fetch_failures"] = sum(f.failures for f in preference.model_metrics.feeds)
        return values

    async def _housekeeping(self) -> None:
        period_s = self.config.settings.metrics_publish_interval_s
        while True:
            await asyncio.sleep(period_s)
            self.pool.sweep()
            self._publish_metrics()

    def _publish_metrics(self) -> None:
        """With --workers N: this worker's numbers, for the others' scrapes (see
        plano_fast.metrics; at most this loop's period, ``metrics_publish_interval_s``, stale)."""
        if self.metrics_dir is None:
            return
        try:
            write_snapshot(self.metrics_dir, self.metrics_snapshot())
        except OSError as exc:
            log.warning("metrics snapshot not written: %s", exc)

    # -- connections ------------------------------------------------------------------
    def _protocol_factory(self) -> ServerProtocol:
        # (``handle`` without its frame: ``dispatch(self, ...)`` called by C, ~1 Python
        # frame fewer per request)
        proto = ServerProtocol(
            functools.partial(dispatch, self), self.limits, self.clock, self.connections.discard,
            self.precheck, self._refusal,
        )
        self.connections.add(proto)
        return proto

    def handle(self, request: Request, responder: Responder) -> Coroutine[Any, Any, None] | None:
        """Dispatch by path (plano_fast.gateway.dispatch); forwarded endpoints become an
        Exchange (see Exchange.start).  A refusal (GatewayError, raised here or later by
        the exchange's task) is answered by the server in the client's format and counted
        by :meth:`_refusal` (errors_total, and its access-log line).  The server is given
        ``functools.partial(dispatch, self)``, the same call without this frame."""
        return dispatch(self, request, responder)

    def _refusal(self, exc: GatewayError, path: bytes | None, responder: Responder | None) -> None:
        """Every refusal the server answers (parse errors, 404/405, auth, budgets, rate
        limits, ...; the path of errors only): errors_total by type, and the answer's
        access-log line unless it has one.  An exchange that refused or settled wrote its
        own (with its mode, key hash and model) and marked the responder ``logged``; what
        no exchange logged -- a refusal before a mode
        handles the request -- gets plano_fast.access_log.refusal_record.  Not counted: an
        UpstreamError, whose exchange (a provider it could not reach) has settled itself,
        and its settle counted it (``upstream`` or ``timeout``, Exchange.observe) -- once."""
        if not isinstance(exc, UpstreamError):
            self.ctx.metrics.error(error_type(exc.status, exc.code))
        if exc.request_id is None:  # (an exchange's refusal has its own: Exchange.refused)
            exc.request_id = new_request_id()  # answered as x-plano-request-id, as its line's
        access_log = self.ctx.access_log
        if access_log is not None and responder is not None and not getattr(responder, "logged", False):
            access_log.record(refusal_record(exc, path, exc.request_id, responder.peer()))

    def precheck(self, request: Request) -> None:
        """A head that expects 100-continue (see plano_fast.gateway.dispatch.precheck)."""
        precheck(self, request)


def _stop_unanswered(
    proto: ServerProtocol, waiting: dict[Responder, tuple[Exchange, asyncio.Task[Any] | None]]
) -> bool:
    """The drain is over and this connection's request waits for its provider's first byte,
    or waits with nothing at a provider yet (``waiting``: ``ExchangeContext.waiting`` by
    responder): the exchange answers it a 503 in the client's format
    (``Exchange.stop_unanswered``, ``Exchange.stop_waiting``).  True when it did: the
    connection then closes after the answer, not aborted (an abort would drop the answer).
    A request sent is found through the upstream connection it was sent on (its sink: the
    exchange, or a hedged attempt the exchange took over)."""
    responder = proto.active
    if responder is None or responder.head_sent:
        return False
    found = waiting.get(responder)  # (first: ``upstream`` may be an earlier attempt's)
    if found is not None:
        return found[0].stop_waiting(found[1])
    sink = getattr(responder.upstream, "sink", None)  # (an UpstreamConnection's, upstream.py)
    exchange = getattr(sink, "exchange", sink)
    return isinstance(exchange, Exchange) and exchange.stop_unanswered()


METRICS_DIR_ENV = "PLANO_FAST_METRICS_DIR"


def in_flight(connections: Iterable[ServerProtocol]) -> tuple[int, int]:
    """Requests being answered and, of those, streams, counted at scrape time over the
    client connections (nothing on the request path): a connection's active responder is
    a request in flight; its exchange (the owner of ``on_client_gone``) says whether it
    streams."""
    requests = streams = 0
    for proto in connections:
        responder = proto.active
        if responder is None:
            continue
        requests += 1
        if getattr(getattr(responder.on_client_gone, "__self__", None), "streaming", False):
            streams += 1
    return requests, streams


def error_type(status: int, code: str | None = None) -> str:
    """The ``type`` label of errors_total for a refusal the gateway answered itself."""
    if status in (401, 403):
        return "auth"
    if status == 402 or code == "spending_limit_exceeded":
        return "budget"
    if status == 429:
        return "rate_limit"
    if status < 500:
        return "client"
    return "unavailable" if status == 503 else "gateway"


def listener_retry_policy(max_retries: int | None) -> RetryPolicy | None:
    """``listeners[].max_retries``: retries of the same target for providers without a
    retry_policy of their own (None or 0: none beyond a dead pooled connection's)."""
    if not max_retries:
        return None
    return RetryPolicy(default_strategy="same_model", default_max_attempts=max_retries + 1)


#: An admin API reachable from other hosts is only as strong as its key: 32 characters of
#: token_urlsafe are 192 bits, beyond online guessing.
MIN_EXPOSED_ADMIN_KEY_CHARS = 32


class AdminKeyMissing(ValueError):
    pass


class _GatewayAdmin:
    """The admin API's view of this gateway (plano_fast.admin.AdminContext)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway

    @property
    def store(self) -> Store:
        return self._gw.store

    @property
    def registry_ready(self) -> bool:
        return self._gw.registry.ready and self._gw.billing.budget.ready

    @property
    def keys_registered(self) -> bool:
        return self._gw.firewall or self._gw.managed is not None

    async def on_keys_changed(self) -> None:
        await self._gw.registry.reload()

    async def on_prices_changed(self) -> None:
        await self._gw.billing.pricer.reload_custom_prices()

    async def on_limits_changed(self) -> None:
        await self._gw.billing.budget.check_once()
        if self._gw.managed is not None:
            await self._gw.managed.state.reload()

    @property
    def cipher(self) -> KeyCipher | None:
        managed = self._gw.managed
        return managed.state.cipher if managed is not None else None

    async def on_managed_changed(self) -> None:
        if self._gw.managed is not None:
            await self._gw.managed.state.reload()

    def blocked(self) -> frozenset[tuple[str, str]]:
        return self._gw.billing.budget.blocked

    def metrics(self) -> dict[str, float]:
        return self._gw.process_metrics()

    def exposition(self) -> bytes:
        gw = self._gw
        merged = Merged()
        if gw.metrics_dir is None:
            merged.add(gw.metrics_snapshot())
        else:
            # Every worker's last published snapshot, this one's too (not its live
            # numbers): a file only ever moves forward, so two scrapes landing on two
            # workers never see a counter go down (Prometheus would take that for a reset
            # and count the whole value again in rate()/increase()).
            for snapshot in read_snapshots(gw.metrics_dir):
                merged.add(snapshot)
        return render(merged)

    def circuits(self) -> list[dict[str, Any]]:
        ctx = self._gw.ctx
        return circuit_views(list(ctx.circuits.items()), ctx.pool.loop.time(), time.time())

    def lookup_key(self, key_hash: str) -> RegisteredApiKey | None:
        return self._gw.registry.lookup_key(key_hash)

    def admit_path(self, method: bytes, target: bytes) -> None:
        admit_path(self._gw, method, target)

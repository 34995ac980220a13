"""The failover engine shared by every mode that has targets to walk (config mode's routes
and their fallbacks, managed pipes' targets): one request, one :class:`RetryPlan`, one
circuit breaker per target; attempts before the first byte reached the client only.

A subclass says what a target is (``_target_circuit``: its health memory;
``_prepare_target``: the upstream request for it) and, when it builds its plan only on the
first failure (managed pipes: nothing on the path of a request that succeeds),
``_late_plan``.  The decisions are plano_fast.failover's; this class wires them to the
exchange's callbacks (connect error, response head, upstream error, swallowed answer).
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from plano_fast.errors import GatewayError
from plano_fast.failover import RETRYABLE_STATUSES, CircuitBreaker, RetryPlan, RetryPolicy, retry_after_s
from plano_fast.gateway.hedge import Hedge, set_target_state, target_state
from plano_fast.gateway.relay import Exchange
from plano_fast.usage import STATUS_CLIENT_GONE

if TYPE_CHECKING:
    from plano_fast.errors import UpstreamError
    from plano_fast.upstream import UpstreamHead

#: how often a due hedge looks again whether the attempt it hedges has been sent
HEDGE_POLL_S = 0.01

#: the backoff's jitter: one generator per process (a ``random.Random()`` per request would
#: read os.urandom each time; the draws need no independence between requests)
JITTER_RNG = random.Random()


class RetryingExchange(Exchange):
    """An exchange whose failed attempts (before the first byte reached the client) may be
    followed by others, as its :class:`RetryPlan` says."""

    # Its state (``plan``, ``next_attempt``, ``circuit``) is in Exchange's slots, set by
    # Exchange.__init__: one constructor frame less on every request.
    __slots__ = ()

    # -- what a target is (the subclass's) --------------------------------------------
    def _target_circuit(self, index: int) -> CircuitBreaker:
        raise NotImplementedError

    def _prepare_target(self, index: int) -> None:
        """Aim this exchange at the plan's target ``index`` (its upstream request)."""
        raise NotImplementedError

    def _late_plan(self) -> RetryPlan[Any] | None:
        """The plan, built at the first failure by exchanges that do not build it up front;
        None: no retries."""
        return None

    def _retry_policy(self) -> RetryPolicy | None:
        """The policy a failed answer is judged by (None: none): the plan's (a subclass
        that makes its plan late may know it before)."""
        plan = self.plan
        return None if plan is None else plan.policy

    # -- the engine -------------------------------------------------------------------
    def _failed(
        self, status: int | None, retry_after: float | None, kind: str, target_fault: bool = True
    ) -> bool:
        """The current attempt failed before the client saw anything (``status`` None: no
        response): note it, and decide whether another attempt follows (then True, and
        ``kind`` -- its status or error kind -- on the usage row's attempt trail): either
        ``next_attempt`` is set, or (``next_attempt`` None) a hedge in flight to the target
        the plan goes to next became the current attempt (``_adopt_hedge``).
        ``target_fault`` False: a failure that says nothing of the target's health (a
        reused keep-alive connection that died before answering), not on its circuit.
        A 2xx answer once received (``status``: 0 until an attempt's head is taken, reset
        by ``_advance`` and ``_adopt_hedge``; an error head is judged by ``_retry_head``
        before it is set, a swallowed one sets its 4xx/5xx) is never followed
        by another, even when the client has seen nothing of it yet -- a conversion or the
        response guardrails hold the head to the answer's end: the provider answered and
        billed it, and its body failing later (a coding that never ended, a cut) is that
        attempt's row, not a reason to ask the next target too."""
        if self.responder.head_sent or self.outcome or self.client_left or 200 <= self.status < 300:
            return False
        plan = self.plan
        if plan is None:
            plan = self.plan = self._late_plan()
            if plan is None:
                return False
        now = self.ctx.pool.loop.time()
        circuit = self._target_circuit
        if target_fault:
            circuit(plan.index).record_failure(now)
        healthy = frozenset(i for i in range(len(plan.targets)) if circuit(i).available(now))
        before = plan.index
        hedge = self.hedge
        if hedge is not None and hedge.live():
            # (its circuit may be the half-open probe this hedge took: not "available")
            if plan.adopt(hedge.index, status, healthy | {hedge.index}):
                self.note_failed(kind)
                self._adopt_hedge(hedge, before)
                return True
            self._drop_hedge(hedge)
        nxt = plan.next_attempt(status, now, retry_after, healthy)
        if nxt is None:
            return False
        self.next_attempt = (nxt[0], nxt[1], nxt[0] != before)
        self.note_failed(kind)
        return True

    def _retry_head(self, head: UpstreamHead) -> bool:
        """Whether this response head is a failure another attempt follows (then it is
        swallowed: nothing reaches the client).  Otherwise the target's circuit notes a
        success (a closed circuit with no failures has nothing to forget: no call)."""
        status = head.status
        if status in RETRYABLE_STATUSES or (
            status >= 400 and (policy := self._retry_policy()) is not None and policy.rule_for(status) is not None
        ):
            if self._failed(status, retry_after_s(head.headers()), str(status)):
                if self.next_attempt is not None:
                    self.status = status
                    self.swallow = True  # the next attempt serves the client
                return True
            return False
        circuit = self.circuit
        if circuit is not None and circuit.failures:
            circuit.record_success()
        return False

    async def _advance(self) -> None:
        """Wait as the plan says, then aim this exchange at the next target."""
        nxt, self.next_attempt = self.next_attempt, None
        assert nxt is not None and self.plan is not None
        index, wait_s, moved = nxt
        self.attempts = 0  # (before the wait: a client gone during it ends no attempt)
        if wait_s > 0:
            waiting = self.ctx.waiting
            self.ctx.waits(self)  # (a stop in the wait answers 503: Exchange.stop_waiting)
            try:
                await asyncio.sleep(wait_s)
            except asyncio.CancelledError:
                self._settle(STATUS_CLIENT_GONE, self.status)
                raise
            finally:
                waiting.pop(self, None)
        ctx = self.ctx
        ctx.retries_total += 1
        if moved:
            ctx.failovers_total += 1
        circuit = self.circuit = self._target_circuit(index)
        circuit.allow(ctx.pool.loop.time())
        self.status = 0
        self.scanner = None
        self.swallow = False
        self._prepare_target(index)

    def _retry_pending(self) -> bool:
        return self.next_attempt is not None

    def _retry_after_connect_error(self, error: UpstreamError) -> bool:
        return self._failed(None, None, error.kind)

    async def _retry(self) -> None:
        await self._advance()
        await self._forward()

    def _schedule_retry(self) -> None:
        done = self.done
        if done is None:
            self.responder.continue_in_task(self._retry(), self.request)
        elif not done.done():
            done.set_result(False)  # _forward sees the pending retry and carries on

    def on_upstream_head(self, head: UpstreamHead) -> None:
        if head.status < 400:  # (inline: the path of every answer)
            hedge = self.hedge
            if hedge is not None:  # this attempt answered first (a hedge that won is not cancelled)
                self._drop_hedge(hedge)
            circuit = self.circuit
            if circuit is not None and circuit.failures:
                circuit.record_success()
        elif not self.client_left and self._retry_head(head):
            # (a client gone: read on for the usage, Exchange._client_gone, never retried;
            # a hedge in flight was adopted or dropped by _failed)
            return
        else:
            hedge = self.hedge
            if hedge is not None:  # an error answer the client gets: the hedge is not needed
                self._drop_hedge(hedge)
        # (the base's method named, not super(): on 3.11 super() is an object per call)
        Exchange.on_upstream_head(self, head)

    def on_upstream_error(self, error: UpstreamError, retry_safe: bool) -> None:
        hedge = self.hedge
        # A reused connection that died before answering is sent again on a fresh one
        # (Exchange.on_upstream_error), but not while a hedge is in flight: that shortcut
        # would cancel the hedge after it was sent, and the plan's next attempt would then
        # send its target a second request.  _failed adopts the hedge (or drops it and
        # retries as the plan says).  Either way a retry-safe failure (a stale keep-alive
        # connection the provider or a middlebox closed) is not counted on the target's
        # circuit: without a hedge it is not either (the fresh retry below).
        fresh = retry_safe and self.attempts == 1 and (hedge is None or not hedge.live())
        if not fresh and self._failed(None, None, error.kind, target_fault=not retry_safe):
            if self.next_attempt is not None:  # (None: a hedge in flight is the attempt now)
                self.conn = None
                self._schedule_retry()
            return
        hedge = self.hedge
        if hedge is not None:
            self._drop_hedge(hedge)
        super().on_upstream_error(error, retry_safe)

    def _client_gone(self, client_status: int = 0) -> None:
        hedge = self.hedge
        if hedge is not None:
            hedge.cancel()
        super()._client_gone(client_status)

    # -- hedging (plano_fast.gateway.hedge) ---------------------------------------------
    def _drop_hedge(self, hedge: Hedge) -> None:
        """This attempt answered or failed first: cancel a hedge still in flight and give
        its attempt back to the plan, so that a failure here is retried as without hedging
        (a hedge that won is not cancelled).  A hedge already sent is on the usage row's
        trail (``hedged``, as the slower attempt is when the hedge wins) and counted
        (``hedges_lost``): the provider may bill the answer it was generating, which no
        row prices (before 2026-12-06 it was on neither)."""
        if hedge.live():
            plan = self.plan
            if plan is not None:
                plan.attempts -= 1
            if hedge.conn is not None:  # (sent: set just before its request is written)
                self.ctx.hedges_lost += 1
                self.note_failed("hedged")
        hedge.cancel()

    def _adopt_hedge(self, hedge: Hedge, failed_index: int) -> None:
        """This attempt failed and the plan's next attempt is the hedge's target: the hedge
        in flight becomes the current attempt (the exchange relays from it, and its own
        failure is retried as the plan says), instead of being cancelled for a second
        request to the same target -- which the provider would bill twice."""
        old = self.conn
        if old is not None:
            old.detach()  # the failed attempt's answer is not read on (never relayed)
        set_target_state(self, hedge.state)
        # None while it still connects: Hedge.run hands it over
        self.conn = self.responder.upstream = hedge.conn
        self.circuit = hedge.circuit
        self.status = 0
        self.swallow = False
        ctx = self.ctx
        ctx.retries_total += 1
        if hedge.index != failed_index:
            ctx.failovers_total += 1
        hedge.adopt()

    def arm_hedge(self, delay_s: float) -> None:
        """A hedge is due after ``delay_s`` unless this attempt has answered by then."""
        self.ctx.pool.loop.call_later(delay_s, self._start_hedge)

    def _start_hedge(self) -> None:
        plan = self.plan
        if (plan is None or self.hedge is not None or self.status or self.outcome
                or self.client_left or self.responder.head_sent):
            return  # answered, failed or ended: no hedge
        if self.next_attempt is not None:
            return  # this attempt failed and the plan waits for the next: no hedge of a wait
        if self.conn is None:  # still connecting: once it is sent
            self.ctx.pool.loop.call_later(HEDGE_POLL_S, self._start_hedge)
            return
        now = self.ctx.pool.loop.time()
        circuit_of = self._target_circuit
        index = plan.hedge_target(frozenset(i for i in range(len(plan.targets)) if circuit_of(i).available(now)))
        if index is None:
            return
        own = target_state(self)
        try:
            self._prepare_target(index)
        except GatewayError:
            set_target_state(self, own)
            return
        state = target_state(self)
        set_target_state(self, own)
        circuit = circuit_of(index)
        circuit.allow(now)
        plan.attempts += 1
        self.ctx.hedges_total += 1
        hedge = self.hedge = Hedge(self, index, state, circuit)
        hedge.task = self.ctx.pool.loop.create_task(hedge.run())

    def take_hedge(self, hedge: Hedge) -> bool:
        """The hedge's head came first and is an answer: relay from its connection (the
        own attempt is cancelled).  False when this exchange has moved on."""
        if self.status or self.outcome or self.client_left or self.responder.head_sent or self.swallow:
            return False
        conn = self.conn
        if conn is not None:
            conn.detach()  # the slower attempt: closed, never billed (no usage came)
        self.note_failed("hedged")  # the usage row's trail: the slower attempt, then the hedge
        set_target_state(self, hedge.state)
        self.conn = hedge.conn
        self.responder.upstream = hedge.conn
        self.circuit = hedge.circuit
        plan = self.plan
        assert plan is not None
        if plan.index != hedge.index:
            self.ctx.failovers_total += 1
        plan.index = hedge.index
        self.ctx.hedges_won += 1
        return True

    def _swallowed(self) -> None:
        self.swallow = False
        self.conn = None
        self._schedule_retry()

"""Hedged requests (config mode, non-streaming chat completions and messages; off unless a
provider's ``retry_policy`` sets ``hedge_after_ms``).

When the request's attempt has been sent and no response head came within
``hedge_after_ms``, a second attempt goes to the retry plan's next target (its strategy,
healthy circuits, attempts left).  The first response head that is an answer wins:

* the hedge's: the exchange's own attempt is cancelled (its connection closed) and the
  exchange relays from the hedge's connection with the hedge's target state (provider,
  model, usage scanner, conversion), as if it had sent it;
* the exchange's own: the hedge is cancelled;
* a failure of the exchange's own attempt: when the retry plan's next attempt would go to
  the hedge's target, the hedge is *adopted* -- it becomes the exchange's current attempt
  (relayed from like a winner; its own failure retried as the plan says) -- rather than
  cancelled for a second request to the same target, which the provider would bill too;
  otherwise the hedge is cancelled and the plan goes on as without hedging.

A hedge whose attempt fails (a retryable status, no connection, a timeout) is dropped and
noted on its target's circuit; the exchange's own attempt goes on.

Billing: one row, the winner's.  The loser never reported usage -- an LLM answer's usage
is in its body, after its head, and the loser is cancelled when the winner's head
arrives, before its own -- so the row prices none of it, though the provider may bill
what it generated (a non-streamed answer's head comes after the whole generation).  Not
estimated (how far it got is unknown), but visible: a loser that was sent is on the row's
trail (``hedged``: ``attempts`` counts it) and a lost hedge in ``/metrics``
(``plano_fast_upstream_hedges_lost``).  Under a hard limit there is no hedging:
``managed_retry_policy`` refuses ``hedge_after_ms`` (a reservation bounds one attempt).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from plano_fast.errors import UpstreamError
from plano_fast.failover import RETRYABLE_STATUSES

if TYPE_CHECKING:
    from plano_fast.failover import CircuitBreaker
    from plano_fast.gateway.retrying import RetryingExchange
    from plano_fast.upstream import UpstreamConnection, UpstreamHead

#: the exchange's per-target state (what preparing a target sets): swapped in when a hedge wins
TARGET_STATE = (
    "provider", "provider_id", "model", "streaming", "wire_format", "scan_api", "scanner",
    "body_filter", "upstream_data", "origin", "timeouts",
)  # fmt: skip
_ORIGIN: Final = TARGET_STATE.index("origin")
_UPSTREAM_DATA: Final = TARGET_STATE.index("upstream_data")
_TIMEOUTS: Final = TARGET_STATE.index("timeouts")


def target_state(exchange: Any) -> tuple[Any, ...]:
    return tuple(getattr(exchange, name) for name in TARGET_STATE)


def set_target_state(exchange: Any, state: tuple[Any, ...]) -> None:
    for name, value in zip(TARGET_STATE, state):
        setattr(exchange, name, value)


class Hedge:
    """The second attempt of a hedged request: a ResponseSink that, once its head has won,
    hands everything to the exchange."""

    __slots__ = ("exchange", "index", "state", "circuit", "conn", "task", "won", "over", "pooled")

    def __init__(
        self, exchange: RetryingExchange, index: int, state: tuple[Any, ...], circuit: CircuitBreaker
    ) -> None:
        self.exchange = exchange
        self.index = index
        self.state = state
        self.circuit = circuit
        self.conn: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        #: this attempt's head won, or the exchange adopted it (``adopt``): the exchange
        #: relays from its connection, and everything this sink receives goes to it
        self.won = False
        #: lost, failed or cancelled
        self.over = False
        #: the connection came from the idle pool (one the server may have closed meanwhile:
        #: its failure is retried once on a new connection, as Exchange._forward does)
        self.pooled = False

    async def run(self, reuse: bool = True) -> None:
        """Connect and send with the hedge target's own timeouts (its provider's)."""
        state = self.state
        origin, timeouts = state[_ORIGIN], state[_TIMEOUTS]
        pool = self.exchange.ctx.pool
        conn = pool.take_idle(origin) if reuse else None
        self.pooled = conn is not None
        if conn is None:
            try:
                conn = await pool.connect(origin, timeouts[0])
            except UpstreamError as exc:
                if self.won and not self.over:  # adopted: the exchange's attempt failed
                    self.over = True
                    self.exchange.on_upstream_error(exc, False)
                    return
                self._failed()
                return
        if self.over:  # cancelled while it connected
            conn.detach()
            return
        self.conn = conn
        if self.won:  # adopted while it connected: the exchange's connection now
            ex = self.exchange
            ex.conn = ex.responder.upstream = conn
        conn.send_request(state[_UPSTREAM_DATA], self, timeouts[1], timeouts[2])

    def live(self) -> bool:
        """Sent or being sent, and neither answered nor over."""
        return not (self.won or self.over)

    def adopt(self) -> None:
        """The exchange's own attempt failed and this one is its attempt now (see
        ``RetryingExchange._adopt_hedge``): its head, body and failure go to the exchange."""
        self.won = True

    def cancel(self) -> None:
        """The exchange's own attempt answered or failed, or the request ended.  A hedge
        that won or was adopted is the exchange's attempt (its connection the exchange's
        to close), except one still connecting: that is given up here."""
        if self.over:
            return
        if self.won:
            task = self.task
            if self.conn is None and task is not None and not task.done():
                self.over = True
                task.cancel()
            return
        self.over = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach()
        task = self.task
        if task is not None and not task.done():
            task.cancel()

    def _failed(self) -> None:
        if self.over:
            return
        self.over = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.detach()
        self.circuit.record_failure(self.exchange.ctx.pool.loop.time())

    # -- ResponseSink -----------------------------------------------------------------
    def on_upstream_head(self, head: UpstreamHead) -> None:
        ex = self.exchange
        if self.won:
            ex.on_upstream_head(head)
            return
        status = head.status
        plan = ex.plan
        if status in RETRYABLE_STATUSES or (
            status >= 400 and plan is not None and plan.policy.rule_for(status) is not None
        ):
            self._failed()
            return
        if not ex.take_hedge(self):  # the exchange has moved on: this one is dropped
            self.cancel()
            return
        self.won = True
        ex.on_upstream_head(head)

    def on_upstream_body(self, data: bytes) -> None:
        if self.won:
            self.exchange.on_upstream_body(data)

    def on_upstream_read_done(self) -> None:
        if self.won:
            self.exchange.on_upstream_read_done()

    def on_upstream_complete(self) -> None:
        if self.won:
            self.exchange.on_upstream_complete()

    def on_upstream_error(self, error: UpstreamError, retry_safe: bool) -> None:
        self.conn = None
        if retry_safe and self.pooled and not self.over:
            # a pooled connection the server had closed before answering (so no head has
            # won): not the target's failure; once more on a new one
            if self.won:  # adopted: the exchange waits for the new connection
                self.exchange.conn = None
            self.task = self.exchange.ctx.pool.loop.create_task(self.run(reuse=False))
            return
        if self.won:
            self.exchange.on_upstream_error(error, False)
            return
        self._failed()

    def on_upstream_pause_writing(self) -> None:
        if self.won:
            self.exchange.on_upstream_pause_writing()

    def on_upstream_resume_writing(self) -> None:
        if self.won:
            self.exchange.on_upstream_resume_writing()

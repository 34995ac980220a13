"""Settles a stop could not finish, kept on disk for the next start on this host.

A managed request's settle (its usage row and the release of its reservation, in one
transaction) that a stop cancels leaves its reservation held in the store and its row in
the usage journal.  The row alone, replayed, counts the cost; but the reservation must
not be released before that, or the hard limit holds neither for a while (a request
admitted then overshoots it).  So the stop keeps each such (reservation, row) pair here,
fsynced, and the next start settles the pairs -- the row counted and the reservation
freed by one transaction, idempotent with the usage journal's copy of the row -- before
its reservation sweeper runs.  Until then the stopped instance's vouch
(``Gateway._vouch``) keeps other instances' sweepers off the reservation.

Files are ``<usage_journal_path>-settles.<pid>``, claimed as the usage journal's are
(renamed, a live process's left alone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from plano_fast.billing.journal import Journal, append_synced
from plano_fast.store.records import CounterKey, Reservation, UsageRow

if TYPE_CHECKING:
    from plano_fast.managed.context import ManagedContext

log = logging.getLogger("plano_fast.managed")
_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRow))

#: what one kept settle is: the reservation, its usage row
Pair = tuple[Reservation, UsageRow]


class SettleJournal:
    def __init__(self, usage_journal_path: str) -> None:
        # The usage journal's file handling (per-process name, claim); its own base name,
        # outside the usage journal's claim glob (``<base>.*``).
        self.files = Journal(f"{usage_journal_path}-settles")

    @property
    def path(self) -> Path:
        return self.files.path

    def keep(self, pairs: list[Pair]) -> int:
        """Append ``pairs`` (fsynced, as a spill is)."""
        lines = [json.dumps(_record(reservation, row), separators=(",", ":")) for reservation, row in pairs]
        if not lines:
            return 0
        append_synced(self.files.path, "\n".join(lines) + "\n")
        return len(lines)

    def claim(self) -> list[Path]:
        return self.files.claim()

    @staticmethod
    def read(path: Path) -> list[Pair]:
        pairs: list[Pair] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    data = json.loads(line)
                except ValueError:
                    continue  # a torn last line (a crash mid-write): its row is in the usage journal
                if not isinstance(data, dict):
                    continue
                try:
                    pairs.append(_pair(data))
                except (KeyError, TypeError, ValueError, AssertionError) as exc:
                    # One line this code cannot read (written by another version, or
                    # damaged) must not hold up the others: its reservation stays held
                    # until it expires, which errs on the budget's side.
                    log.error("a kept settle in %s could not be read (%s): skipped", path, type(exc).__name__)
        return pairs


def _record(reservation: Reservation, row: UsageRow) -> dict[str, object]:
    return {
        "reservation": {
            "id": reservation.id,
            "amount_nano_usd": reservation.amount_nano_usd,
            "counters": [list(key) for key in reservation.counters],
            "expires_at_ns": reservation.expires_at_ns,
            "owner": reservation.owner,
        },
        "row": Journal.record_of(row),
    }


def _pair(data: dict[str, object]) -> Pair:
    res = data["reservation"]
    row = data["row"]
    assert isinstance(res, dict) and isinstance(row, dict)
    reservation = Reservation(
        str(res["id"]), int(res["amount_nano_usd"]), tuple(CounterKey(*key) for key in res["counters"]),
        int(res["expires_at_ns"]), res["owner"] if isinstance(res["owner"], str) else None,
    )
    # (fields this version does not know are left out, as Journal.read_batches does)
    return reservation, UsageRow(**{k: row[k] for k in _ROW_FIELDS if k in row})


async def finish_or_keep(mctx: ManagedContext, journal: SettleJournal, bound_s: float) -> int:
    """At a stop, once the usage queue is drained: each settle the stop cancelled is tried
    once more within ``bound_s`` (the store may answer again); the ones it does not take
    are kept in ``journal``.  Returns how many were kept (0: this instance may be forgotten,
    nothing of it is left that a sweeper must not release)."""
    # (each leaves ``unsettled`` only once settled: a stop whose own bound cancels this
    # keeps what is left there, ``keep``)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    for reservation, row in list(mctx.unsettled.values()):
        try:
            async with asyncio.timeout_at(deadline):
                await _settle_or_release(mctx, reservation, row)
        except Exception:  # noqa: BLE001 - a timeout or a store fault: kept for the next start
            continue
        mctx.unsettled.pop(reservation.id, None)
    return keep(mctx, journal)


def keep(mctx: ManagedContext, journal: SettleJournal) -> int:
    """Keep every settle the stop cancelled and did not finish in ``journal``; logged."""
    pairs = list(mctx.unsettled.values())
    mctx.unsettled.clear()
    try:
        kept = journal.keep(pairs)
    except OSError as exc:
        # (a symlink at the path, a full disk): the stop goes on -- its rows are in the
        # usage journal, and the reservations stay held until they expire, which errs on
        # the budget's side
        log.error("%d settles not finished at stop could not be kept in %s (%s): their "
                  "reservations stay held until they expire", len(pairs), journal.path, exc)
        return len(pairs)
    if kept:
        log.error("%d settles not finished at stop: their reservations stay held, kept in %s "
                  "(settled at the next start)", kept, journal.path)
    return kept


async def settle_kept(mctx: ManagedContext, journal: SettleJournal, bound_s: float) -> set[str]:
    """At a start, before the reservation sweeper: the settles earlier processes on this host
    kept, settled (the row counted once, the reservation freed).  One the store does not
    take within ``bound_s`` is retried in the background (``settle_soon``).  Returns the
    instances whose kept settles are all done (the caller forgets them: their other
    reservations are then orphans, as after a clean stop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    done: set[str] = set()
    pending: set[str] = set()
    for path in journal.claim():
        for reservation, row in SettleJournal.read(path):
            owner = reservation.owner or ""
            try:
                async with asyncio.timeout_at(deadline):
                    await _settle_or_release(mctx, reservation, row)
            except Exception as exc:  # noqa: BLE001 - retried until done, as a failed settle is
                log.warning("kept settle of reservation %s failed (%s); retrying", reservation.id,
                            type(exc).__name__)
                mctx.settle_soon(reservation, row)
                pending.add(owner)
                continue
            done.add(owner)
        path.unlink(missing_ok=True)
    return {owner for owner in done - pending if owner}


async def _settle_or_release(mctx: ManagedContext, reservation: Reservation, row: UsageRow) -> None:
    try:
        await mctx.store.settle(reservation, row)
    except Exception as exc:
        if not mctx.store.rejects_data(exc):
            raise
        # A row the store refuses cannot settle (its usage journal copy is set aside by the
        # flusher): the reservation is released, as ``ManagedContext`` does.
        await mctx.store.release(reservation)

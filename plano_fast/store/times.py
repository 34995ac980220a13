"""Instants, spending periods and ids, as the store stamps and buckets them.

Instants are ``int`` nanoseconds since the epoch; spending-period starts are ``int``
seconds since the epoch: 0 for ``total``, the UTC month start for ``monthly``, the UTC
day start for ``daily``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import time
import uuid
from typing import Final

from plano_fast.store.records import PERIODS, InvalidValue

NS_PER_S: Final = 1_000_000_000
_NS_PER_DAY: Final = 86_400 * NS_PER_S


def now_ns() -> int:
    return time.time_ns()


def new_id() -> str:
    return str(uuid.uuid4())


def day_start(time_ns: int) -> int:
    """UTC day start, in epoch seconds, of an instant in epoch nanoseconds."""
    return (time_ns // _NS_PER_DAY) * 86_400


@functools.lru_cache(maxsize=4096)
def _month_start_of_day(day_start_s: int) -> int:
    d = _dt.datetime.fromtimestamp(day_start_s, _dt.UTC)
    return int(_dt.datetime(d.year, d.month, 1, tzinfo=_dt.UTC).timestamp())


def month_start(time_ns: int) -> int:
    """UTC month start, in epoch seconds, of an instant in epoch nanoseconds."""
    return _month_start_of_day(day_start(time_ns))


def period_start(period: str, time_ns: int) -> int:
    """Start (epoch seconds) of the ``period`` containing ``time_ns``; 0 for ``total``."""
    if period == "total":
        return 0
    if period == "monthly":
        return month_start(time_ns)
    if period == "daily":
        return day_start(time_ns)
    raise InvalidValue(f"unknown period {period!r} (expected one of {', '.join(PERIODS)})")

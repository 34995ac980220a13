"""Loop-thread cost of the billing pipeline: submit -> drain -> price -> row -> store.

    python -m benchmarks.bench_billing                  # 20k events, uvloop, SQLite in a temp dir
    python -m benchmarks.bench_billing --events 50000 --repeat 5

What it prints (best of ``--repeat`` runs for the per-event costs, worst for stalls):

* micro, per event, no store: ``submit`` (the request path's whole billing cost), ``drain``
  (``flush_now`` against a store that only validates the batch: price + row + normalize,
  all on the loop thread), ``params`` (the SQLite worker's Python work to bind one row);
* end to end with a real ``SqliteStore``: the flusher's own task running (batch 1000) while
  events arrive in bursts of 64; loop-thread CPU and total process CPU per event, and the
  longest gap between two passes of the event loop (``stall``: the longest time any
  callback, or a GIL hand-off to the SQLite worker, kept the loop from running), measured
  by a callback that re-schedules itself with ``call_soon`` and records the gap;
* ``flush_now`` of 10k queued events with the same stall probe (the drain a shutdown or
  the admin API runs).

The stall probes run with the cyclic garbage collector paused (``--gc`` keeps it on): a
full collection stops the loop for as long as the whole heap takes to traverse, whatever
code happened to allocate last, so it would hide the billing code's own stretches.  The
longest collection seen during the end-to-end runs is printed on its own line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from plano_fast.billing.flusher import UsageFlusher
from plano_fast.billing.journal import Journal
from plano_fast.billing.metrics import BillingMetrics
from plano_fast.pricing import PricingRegistry
from plano_fast.store import UsageRow, normalize_usage, open_store
from plano_fast.store import sqlite as sqlite_store
from plano_fast.store.migrate import migrate
from plano_fast.usage import STATUS_OK, STATUS_UPSTREAM_ERROR, UsageEvent

_TARGETS = (
    ("openai", "gpt-4o-mini", "openai"),
    ("openai", "gpt-4.1-2025-04-14", "openai"),
    ("anthropic", "claude-sonnet-4-5-20250929", "anthropic"),
    ("gemini", "gemini-2.5-flash", "openai"),
    ("groq", "llama-3.3-70b-versatile", "openai"),
)
_KEYS = tuple(hashlib.sha256(f"key{i}".encode()).hexdigest() for i in range(50))


def make_events(n: int, tag: str) -> list[UsageEvent]:
    """A realistic mix: 5 models, 20 projects, 50 keys, 1 in 50 an upstream error."""
    base = time.time_ns()
    events: list[UsageEvent] = []
    for i in range(n):
        provider, model, wire = _TARGETS[i % len(_TARGETS)]
        err = i % 50 == 0
        events.append(
            UsageEvent(
                request_id=f"{tag}-{i:010d}",
                time_ns=base + i * 1000,
                provider=provider,
                model=model,
                streaming=bool(i & 1),
                status=STATUS_UPSTREAM_ERROR if err else STATUS_OK,
                http_status=500 if err else 200,
                input_tokens=0 if err else 1200 + i % 97,
                output_tokens=0 if err else 300 + i % 13,
                cache_read_tokens=0 if err else (i % 4) * 64,
                reasoning_tokens=0 if err else i % 3,
                has_usage=not err,
                project_id=f"project-{i % 20}",
                key_hash=_KEYS[i % 50],
                # as the settle computes it: nanoseconds / 1e6 (the write-ahead log's
                # compiled writer formats such a double without dtoa)
                duration_ms=(123_456_789 + i % 7 * 1_000_003) / 1e6,
                wire_format=wire,
            )
        )
    return events


class _ValidatingStore:
    """Only what ``write_usage`` does on the loop thread before handing off: validation."""

    async def write_usage(self, rows: Sequence[UsageRow]) -> int:
        batch = normalize_usage(rows)
        await asyncio.sleep(0)  # a real store hands the batch over and waits
        return len(batch)


def _flusher(store: Any, journal_dir: str, batch_size: int = 1000, interval_s: float = 3600.0) -> UsageFlusher:
    return UsageFlusher(
        store, PricingRegistry(), Journal(os.path.join(journal_dir, "usage.journal")), BillingMetrics(),
        interval_s=interval_s, batch_size=batch_size,
    )  # fmt: skip


class GcWatch:
    """The longest cyclic-GC pass while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, (time.perf_counter() - self._started) * 1e3)


class StallProbe:
    """Records the gaps between consecutive passes of the event loop.

    Each gap is kept as wall time and as the loop thread's own CPU time within it.  On a
    small machine the wall time also counts time the loop thread was runnable but not
    running (another thread or process on the core, the GIL held by the SQLite worker);
    the CPU time is what the code run in that pass cost by itself.
    """

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.cpu: list[float] = []
        self._last = 0.0
        self._last_cpu = 0.0
        self._running = False

    def start(self) -> None:
        self._running = True
        self._last = time.perf_counter()
        self._last_cpu = time.thread_time()
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        cpu = time.thread_time()
        self.gaps.append(now - self._last)
        self.cpu.append(cpu - self._last_cpu)
        self._last = now
        self._last_cpu = cpu
        if self._running:
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._running = False

    def summary(self) -> tuple[float, float, float]:
        """(max wall, 99.9th percentile wall, max loop-thread CPU) of the gaps, in ms."""
        if not self.gaps:
            return 0.0, 0.0, 0.0
        gaps = sorted(self.gaps)
        return gaps[-1] * 1e3, gaps[min(len(gaps) - 1, int(len(gaps) * 0.999))] * 1e3, max(self.cpu) * 1e3


def _params_fn() -> Callable[[list[UsageRow]], object]:
    """The SQLite worker's parameter builder (per-row ``_usage_params`` on older code)."""
    chunk_params = getattr(sqlite_store, "_chunk_params", None)
    if chunk_params is not None:
        return chunk_params  # type: ignore[no-any-return]
    usage_params = sqlite_store._usage_params
    return lambda rows: [value for r in rows for value in usage_params(r)]


async def micro(n: int, tmp: str) -> dict[str, float]:
    events = make_events(n, "micro")
    flusher = _flusher(_ValidatingStore(), tmp)
    flusher.batch_size = n + 1  # no threshold wake-ups: we measure the calls alone
    t0 = time.perf_counter()
    for ev in events:
        flusher.submit(ev)
    t1 = time.perf_counter()
    await flusher.flush_now()
    t2 = time.perf_counter()
    assert flusher.metrics.rows_written == n, flusher.metrics
    rows = normalize_usage(
        [UsageRow(e.request_id, e.time_ns, e.project_id, None, e.key_hash, None, e.provider, e.model,
                  e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens,
                  e.reasoning_tokens, e.streaming, e.status, e.http_status, True, 1000, 5)
         for e in events]
    )  # fmt: skip
    params = _params_fn()
    t3 = time.perf_counter()
    for i in range(0, n, 100):
        params(rows[i : i + 100])
    t4 = time.perf_counter()
    return {"submit": (t1 - t0) / n * 1e6, "drain": (t2 - t1) / n * 1e6, "params": (t4 - t3) / n * 1e6}


async def end_to_end(n: int, tmp: str, *, probe: bool, keep_gc: bool = False) -> dict[str, float]:
    store = open_store(None, os.path.join(tmp, f"e2e-{probe}.db"))
    async with store:
        await migrate(store)
        flusher = _flusher(store, tmp, interval_s=0.05)
        await flusher.start()
        events = make_events(n, f"e2e-{probe}")
        stall = StallProbe()
        if probe:
            stall.start()
            if not keep_gc:
                gc.disable()
        cpu0, loop0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
        with GcWatch() as gc_watch:
            for i in range(0, n, 64):
                for ev in events[i : i + 64]:
                    flusher.submit(ev)
                await asyncio.sleep(0)
            await flusher.stop()
        loop_cpu, cpu, wall = time.thread_time() - loop0, time.process_time() - cpu0, time.perf_counter() - t0
        stall.stop()
        await asyncio.sleep(0)
        gc.enable()
        got = (await store._fetch("SELECT COUNT(*) FROM usage_log"))[0][0]  # type: ignore[attr-defined]
        assert got == n, (got, n)
    worst, p999, worst_cpu = stall.summary()
    return {
        "loop_cpu": loop_cpu / n * 1e6, "cpu": cpu / n * 1e6, "wall": wall / n * 1e6,
        "stall_max": worst, "stall_p999": p999, "stall_cpu_max": worst_cpu, "gc_stall_max": gc_watch.longest,
    }  # fmt: skip


async def flush_now_stall(n: int, tmp: str, keep_gc: bool = False) -> dict[str, float]:
    store = open_store(None, os.path.join(tmp, "flush-now.db"))
    async with store:
        await migrate(store)
        flusher = _flusher(store, tmp)
        flusher.batch_size = 1000
        for ev in make_events(n, "flush-now"):
            flusher.submit(ev)
        stall = StallProbe()
        stall.start()
        if not keep_gc:
            gc.disable()
        t0 = time.perf_counter()
        await flusher.flush_now()
        wall = time.perf_counter() - t0
        stall.stop()
        await asyncio.sleep(0)
        gc.enable()
        assert flusher.backlog == 0
    worst, p999, worst_cpu = stall.summary()
    return {"wall_ms": wall * 1e3, "stall_max": worst, "stall_p999": p999, "stall_cpu_max": worst_cpu}


async def run(events: int, repeat: int, keep_gc: bool) -> None:
    best: dict[str, float] = {}
    worst: dict[str, float] = {}

    def keep(result: dict[str, float], stalls: bool = False) -> None:
        for k, v in result.items():
            if stalls and "stall" in k:
                worst[k] = max(worst.get(k, 0.0), v)
            else:
                best[k] = min(best.get(k, float("inf")), v)

    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeat):
            run_dir = os.path.join(tmp, str(r))
            os.makedirs(run_dir)
            keep(await micro(events, run_dir))
            plain = await end_to_end(events, run_dir, probe=False)
            keep({f"e2e_{k}": v for k, v in plain.items() if not k.startswith("stall")}, stalls=True)
            probed = await end_to_end(events, run_dir, probe=True, keep_gc=keep_gc)
            keep({f"probe_{k}": v for k, v in probed.items() if k.startswith("stall")}, stalls=True)
            flushed = await flush_now_stall(10_000, run_dir, keep_gc=keep_gc)
            keep({f"flush_now_{k}": v for k, v in flushed.items()}, stalls=True)
    print(f"events={events} repeat={repeat} loop={type(asyncio.get_running_loop()).__module__}")
    print("per event, µs (best run):")
    print(f"  micro  submit {best['submit']:6.2f}   drain(price+row+validate) {best['drain']:6.2f}   "
          f"sqlite params {best['params']:6.2f}")  # fmt: skip
    print(f"  e2e    loop-thread CPU {best['e2e_loop_cpu']:6.2f}   process CPU {best['e2e_cpu']:6.2f}   "
          f"wall {best['e2e_wall']:6.2f}")  # fmt: skip
    print(f"longest loop stall, ms (worst run; cyclic GC {'on' if keep_gc else 'paused'}):")
    print("                                      wall: max   p99.9   loop-thread CPU: max")
    for label, key in (("e2e (flusher task, bursts of 64)", "probe"), ("flush_now of 10k queued events", "flush_now")):
        print(f"  {label:34s}  {worst[key + '_stall_max']:9.2f} {worst[key + '_stall_p999']:7.2f}"
              f"   {worst[key + '_stall_cpu_max']:18.2f}")  # fmt: skip
    print(f"  flush_now of 10k: wall {best['flush_now_wall_ms']:.0f} ms;"
          f" longest cyclic-GC pass in the e2e runs (GC on): {worst['e2e_gc_stall_max']:.2f} ms")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--asyncio", action="store_true", help="the stdlib loop instead of uvloop")
    parser.add_argument("--gc", action="store_true", help="keep the cyclic GC on in the stall probes")
    args = parser.parse_args(argv)
    if args.asyncio:
        asyncio.run(run(args.events, args.repeat, args.gc))
    else:
        import uvloop

        uvloop.run(run(args.events, args.repeat, args.gc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

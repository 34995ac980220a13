"""Run ``plano_fast`` with tail-latency instrumentation (used by ``benchmarks/tail_probe.py``).

    python benchmarks/tail_hooks.py OUT.json serve --config plano_config.yaml

Nothing here changes what the gateway does; it records, in the gateway process, on
``time.monotonic_ns`` (CLOCK_MONOTONIC: the load generator's clock too, so a slow request
can be matched with what the gateway was doing while it waited):

* every garbage collection: start, duration, generation (``gc.callbacks``);
* every synchronous stretch of every asyncio task (a task factory wraps each task's
  coroutine; one ``send``/``throw`` = one stretch of the loop), by the coroutine's
  qualified name: count, total and max per name, and each stretch >= ``SPAN_MIN_NS``;
* a few loop callbacks that are not tasks (the access log, the usage WAL encoder, the
  SQLite hot-write steps, the metrics snapshot, the pool sweep) by name, the same way;
* loop lag: a 1 ms ``call_later`` ticker's lateness (libuv timers have 1 ms resolution,
  so lateness under ~1 ms is the timer's own; compare with ``--noop`` below).

``python benchmarks/tail_hooks.py OUT.json --noop SECONDS`` runs the same ticker in a
process that does nothing else (uvloop): the machine's (VM's) own scheduling stalls.

The file is written when the process exits (SIGTERM: the gateway stops gracefully).
Instrumented runs are for attribution only; A/B numbers come from runs without hooks.
"""

from __future__ import annotations

import asyncio
import atexit
import collections.abc
import functools
import gc
import json
import os
import resource
import sys
import threading
import time
from typing import Any

now_ns = time.monotonic_ns
cpu_ns = time.thread_time_ns  # this thread's CPU time: what the gateway did, not the VM's preemption
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
SPAN_MIN_NS = 100_000  # stretches at least this long are kept one by one
TICK_S = 0.001

_spans: list[tuple[int, int, int, str]] = []  # (start_ns, wall_ns, cpu_ns, name)
_switches: list[tuple[int, int]] = []  # per span: (voluntary, involuntary) context switches in it
_totals: dict[str, list[int]] = {}  # name -> [count, total cpu_ns, max cpu_ns, max wall_ns]
_gcs: list[tuple[int, int, int, int, int]] = []  # (start_ns, wall_ns, cpu_ns, generation, collected)
_ticks: list[int] = []  # lateness of each tick, ns (late ones only, >= 0.5 ms)
_tick_count = [0]
_gc_start = [0, 0]
_started_ns = now_ns()
_MAIN = threading.get_ident()
#: tasks whose long stretches are profiled (cProfile, top functions kept): PROFILE=name,name
_PROFILE = tuple(filter(None, os.environ.get("TAIL_HOOKS_PROFILE", "").split(",")))
_profiles: list[tuple[int, str, str]] = []  # (cpu_ns, task name, top functions)


def _mark() -> tuple[int, int, int]:
    """This thread's CPU ns and its voluntary / involuntary context switches so far: a
    stretch with a voluntary switch blocked inside (file I/O, the GIL, a lock); an
    involuntary one was preempted (another process wanted the core)."""
    ru = resource.getrusage(_RUSAGE_THREAD)
    return cpu_ns(), ru.ru_nvcsw, ru.ru_nivcsw


def _note(name: str, start: int, mark: tuple[int, int, int]) -> None:
    if threading.get_ident() != _MAIN:
        name = "thread: " + name  # not a stretch of the loop (it may hold the GIL, though)
    dur = now_ns() - start
    cpu_start, nv0, niv0 = mark
    cpu = cpu_ns() - cpu_start
    t = _totals.get(name)
    if t is None:
        _totals[name] = [1, cpu, cpu, dur]
    else:
        t[0] += 1
        t[1] += cpu
        if cpu > t[2]:
            t[2] = cpu
        if dur > t[3]:
            t[3] = dur
    if dur >= SPAN_MIN_NS:
        ru = resource.getrusage(_RUSAGE_THREAD)
        _spans.append((start, dur, cpu, name))
        _switches.append((ru.ru_nvcsw - nv0, ru.ru_nivcsw - niv0))


_GC_CENSUS = [False]  # on once the gateway has started (TAIL_HOOKS_GC_CENSUS=1)
_census: list[tuple[int, int, list[tuple[str, int]]]] = []  # (generation, young objects, top types)


def _take_census(generation: int) -> None:
    """What a gen >= 1 pass is about to traverse: object count and the commonest types
    (costly: diagnostics only, TAIL_HOOKS_GC_CENSUS=1)."""
    import collections

    objs = [o for g in range(generation + 1) for o in gc.get_objects(g)]
    top = collections.Counter(type(o).__qualname__ for o in objs).most_common(12)
    _census.append((generation, len(objs), top))


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start" and _GC_CENSUS[0] and info["generation"] >= 1 and len(_census) < 50:
        gc.callbacks.remove(_on_gc)
        try:
            _take_census(info["generation"])
        finally:
            gc.callbacks.insert(0, _on_gc)
    if phase == "start":
        _gc_start[0] = now_ns()
        _gc_start[1] = cpu_ns()
    else:
        start = _gc_start[0]
        _gcs.append((start, now_ns() - start, cpu_ns() - _gc_start[1], info["generation"], info["collected"]))


class _TimedCoro(collections.abc.Coroutine):  # type: ignore[type-arg]
    """A task's coroutine whose every step is timed (one step = one stretch of the loop)."""

    __slots__ = ("_coro", "_name")

    def __init__(self, coro: Any, name: str) -> None:
        self._coro = coro
        self._name = name

    def send(self, value: Any) -> Any:
        if _PROFILE and any(p in self._name for p in _PROFILE):
            return self._profiled(value)
        start, cpu = now_ns(), _mark()
        try:
            return self._coro.send(value)
        finally:
            _note(self._name, start, cpu)

    def _profiled(self, value: Any) -> Any:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        start, cpu = now_ns(), _mark()
        prof.enable()
        try:
            return self._coro.send(value)
        finally:
            prof.disable()
            used = cpu_ns() - cpu[0]
            _note(self._name, start, cpu)
            if used >= 400_000 and len(_profiles) < 200:
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
                _profiles.append((used, self._name, text.getvalue()[-2500:]))

    def throw(self, *args: Any) -> Any:
        start, cpu = now_ns(), _mark()
        try:
            return self._coro.throw(*args)
        finally:
            _note(self._name, start, cpu)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def __iter__(self) -> Any:
        return self


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    name = getattr(coro, "__qualname__", type(coro).__name__)
    owner = getattr(getattr(coro, "cr_frame", None), "f_locals", {}).get("self")
    if isinstance(getattr(owner, "name", None), str):  # a Periodic: which one
        name = f"{name} {owner.name}"
    return asyncio.Task(_TimedCoro(coro, f"task {name}"), loop=loop, **kwargs)


def _timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, cpu = now_ns(), _mark()
        try:
            return fn(*args, **kwargs)
        finally:
            _note(name, start, cpu)

    return wrapper


def _timed_steps(name: str, gen_fn: Any) -> Any:
    """A generator function whose every ``next`` (a synchronous stretch) is timed."""

    @functools.wraps(gen_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        gen = gen_fn(*args, **kwargs)
        while True:
            start, cpu = now_ns(), _mark()
            try:
                next(gen)
            except StopIteration as done:
                _note(name, start, cpu)
                return done.value
            _note(name, start, cpu)
            yield

    return wrapper


def _patch(obj: Any, attr: str, name: str, steps: bool = False) -> None:
    fn = getattr(obj, attr, None)
    if fn is None:
        return
    wrapped = _timed_steps(name, fn) if steps else _timed(name, fn)
    if isinstance(obj.__dict__.get(attr), staticmethod):
        wrapped = staticmethod(wrapped)
    setattr(obj, attr, wrapped)


def _declines(store_cls: Any) -> None:
    """Each time the hot connection declined a write that could not run at once
    (``_hot_now`` -> None: another write, the WAL restart on the thread or another process
    holds the lock): a span named ``sqlite hot-now declined``, kept whatever its length, so
    the requests that then waited for the awaited path can be counted."""
    fn = getattr(store_cls, "_hot_now", None)
    if fn is None:
        return

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = now_ns()
        result = fn(*args, **kwargs)
        if result is None:
            _spans.append((start, max(SPAN_MIN_NS, now_ns() - start), 0, "sqlite hot-now declined"))
            _switches.append((0, 0))
        return result

    store_cls._hot_now = wrapper


def _start_ticker(loop: asyncio.AbstractEventLoop) -> None:
    state = [now_ns() + int(TICK_S * 1e9)]

    def tick() -> None:
        t = now_ns()
        late = t - state[0]
        _tick_count[0] += 1
        if late >= 500_000:
            _ticks.append(late)
        state[0] = t + int(TICK_S * 1e9)
        loop.call_later(TICK_S, tick)

    loop.call_later(TICK_S, tick)


def _dump(path: str) -> None:
    data = {
        "pid": os.getpid(),
        "started_ns": _started_ns,
        "ended_ns": now_ns(),
        "ticks": _tick_count[0],
        "late_ticks_ns": _ticks,
        "gcs": _gcs,
        "spans": _spans,
        "span_switches": _switches,
        "totals": _totals,
        "gc_threshold": gc.get_threshold(),
        "gc_frozen": gc.get_freeze_count(),
        # collections and objects collected per generation since start; objects in the
        # oldest generation now (the frozen ones are not in it): what survived into it
        "gc_stats": gc.get_stats(),
        "gc_gen2_objects": len(gc.get_objects(2)),
        "switch_interval_s": sys.getswitchinterval(),
        "profiles": _profiles,
        "gc_census": _census,
    }
    with open(path, "w") as fh:
        json.dump(data, fh)


def _timed_sqlite() -> None:
    """Every statement a SQLite connection of the gateway runs, timed by its first words."""
    import sqlite3

    class TimedConnection(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            start, cpu = now_ns(), _mark()
            try:
                return super().execute(sql, *args)
            finally:
                _note("sql " + " ".join(sql.split()[:2])[:24], start, cpu)

    original = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", TimedConnection)
        return original(*args, **kwargs)

    sqlite3.connect = connect  # type: ignore[assignment]


def _install_gateway_hooks() -> None:
    _timed_sqlite()
    import plano_fast.access_log as access_log
    import plano_fast.app as app
    import plano_fast.billing.flusher as flusher
    import plano_fast.billing.journal as journal
    import plano_fast.store.sqlite as sqlite_store

    _patch(access_log.AccessLog, "flush", "access-log flush")
    _patch(journal, "_wal_line", "usage-wal encode")
    _patch(flusher.UsageFlusher, "_convert_slice", "usage-flusher convert slice")
    _patch(sqlite_store, "normalize_usage", "sqlite normalize_usage")
    _patch(flusher.UsageFlusher, "_spill_overflow", "usage-flusher spill check")
    _patch(sqlite_store.SqliteStore, "_write_usage_steps", "sqlite usage insert step", steps=True)
    _patch(app.Gateway, "_publish_metrics", "metrics snapshot publish")
    _patch(sqlite_store, "_checkpoint_and_restart", "sqlite checkpoint+restart")
    _declines(sqlite_store.SqliteStore)
    original_start = app.Gateway.start

    async def start(self: Any) -> None:
        threshold = os.environ.get("TAIL_HOOKS_GC_THRESHOLD")  # an experiment: "700,10,10"
        if threshold:
            gc.set_threshold(*map(int, threshold.split(",")))
        if os.environ.get("TAIL_HOOKS_GC_DEBUG"):  # each pass's generation sizes, to stderr
            gc.set_debug(gc.DEBUG_STATS)
        loop = asyncio.get_running_loop()
        loop.set_task_factory(_task_factory)  # type: ignore[arg-type]
        await original_start(self)
        _patch(type(self.pool), "sweep", "upstream pool sweep")
        _start_ticker(loop)
        _GC_CENSUS[0] = bool(os.environ.get("TAIL_HOOKS_GC_CENSUS"))

    app.Gateway.start = start  # type: ignore[method-assign]


def _noop(seconds: float) -> int:
    import uvloop

    async def main() -> None:
        _start_ticker(asyncio.get_running_loop())
        await asyncio.sleep(seconds)

    uvloop.run(main())
    return 0


def main() -> int:
    out = sys.argv[1]
    gc.callbacks.append(_on_gc)
    atexit.register(_dump, out)
    if sys.argv[2] == "--noop":
        return _noop(float(sys.argv[3]))
    _install_gateway_hooks()
    from plano_fast.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

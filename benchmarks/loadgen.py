"""HTTP/1.1 load generator for the benchmarks (the fallback when wrk/wrk2 are absent).

uvloop + raw ``asyncio.Protocol`` sockets with keep-alive, the request bytes built once,
responses parsed with httptools (llhttp).  Two modes:

* closed loop (``--concurrency C``, no ``--rate``): C connections, each sends its next
  request as soon as the previous response is complete -- saturation throughput.
* open loop (``--rate R``): a fixed request rate spread over the connections, wrk2
  style: connection ``i`` of ``C`` has its own schedule ``start + (i + k*C) / R``.  Latency
  is measured from the *intended* send time whenever the connection was still busy at
  that time (the server made us late: coordinated-omission correction), and from the
  actual send time when the connection was idle (so the event loop's timer granularity
  is not charged to the server).

Streaming (``--stream``): response bodies are counted (bytes, SSE events = blank-line
separators), time to first body byte and total time are recorded, the longest gap
between two body chunks of a stream is tracked (stall detection) and a stream counts as
complete only when its body ends with ``data: [DONE]`` (``--expect-done``, on by default
with ``--stream``).

A request belongs to the measured window when it was sent in it (so a target that falls
behind a fixed rate still shows its real throughput, with latencies that include the
queueing); at the end of the window no new requests are started and in-flight requests
are allowed to finish (up to ``--timeout-s``), so ``sent == completed + errors`` exactly --
the benchmark compares that with the usage rows the gateway recorded.

Percentiles: HdrHistogram (the ``hdrhistogram`` package, module ``hdrh``) when it is
installed, else an exact sorted-list percentile.

    python -m benchmarks.loadgen --url http://127.0.0.1:9000/v1/chat/completions \\
        --body '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' \\
        -c 64 -d 10 [--rate 500] [--stream] [--processes 2] [-H 'authorization: Bearer x']

Prints a human summary, or the full result as JSON with ``--json`` (``--json-out FILE``).
Python API: ``run_load(LoadSpec(...)) -> dict``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import multiprocessing
import os
import resource
import socket
import sys
import time
from collections import Counter
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

import httptools

try:  # optional: HdrHistogram for percentile computation
    from hdrh.histogram import HdrHistogram  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    HdrHistogram = None

__all__ = ["LoadSpec", "run_load", "summarize", "PERCENTILES", "main"]

now = time.monotonic  # CLOCK_MONOTONIC: one clock for every process on the machine

PERCENTILES: tuple[float, ...] = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0)


@dataclasses.dataclass
class LoadSpec:
    url: str
    method: str = "POST"
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()
    concurrency: int = 1
    rate: Optional[float] = None  # requests/s in total (open loop); None = closed loop
    duration_s: float = 5.0
    warmup_s: float = 1.0
    stream: bool = False
    expect_done: Optional[bool] = None  # default: same as stream
    timeout_s: float = 30.0
    processes: int = 1
    connect_stagger: int = 200  # connect in batches of this size

    def request_bytes(self) -> bytes:
        parts = urlsplit(self.url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        lines = [f"{self.method} {path} HTTP/1.1", f"host: {parts.netloc}"]
        names = {k.lower() for k, _ in self.headers}
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            if "content-type" not in names:
                lines.append("content-type: application/json")
            lines.append(f"content-length: {len(self.body)}")
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body

    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


# --------------------------------------------------------------------------- connection


class _Conn(asyncio.Protocol):
    """One keep-alive client connection; one request in flight at a time."""

    def __init__(self, streaming: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.streaming = streaming
        self.transport: Optional[asyncio.Transport] = None
        self.waiter: Optional[asyncio.Future[float]] = None
        self.closed = False
        self.timed_out = False
        self.error: Optional[str] = None
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.keep_alive = True
        self.t_start = 0.0
        self.t_first = 0.0
        self.t_last = 0.0
        self.max_gap = 0.0
        self.nbytes = 0
        self.events = 0
        self.tail = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"parse error: {exc.__class__.__name__}")
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        if self.timed_out:
            self._fail("timeout")
        elif exc is not None:
            self._fail(f"{exc.__class__.__name__}")
        else:
            self._fail("closed by server")

    def _fail(self, why: str) -> None:
        w = self.waiter
        if w is not None and not w.done():
            self.waiter = None
            self.error = why
            w.set_exception(ConnectionError(why))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.nbytes += len(body)
        if self.streaming:
            t = now()
            if self.t_first == 0.0:
                self.t_first = t
            else:
                gap = t - self.t_last
                if gap > self.max_gap:
                    self.max_gap = gap
            self.t_last = t
            n = body.count(b"\n\n")
            if self.tail.endswith(b"\n") and body.startswith(b"\n"):
                n += 1
            self.events += n
            self.tail = (self.tail + body)[-24:] if len(body) < 24 else body[-24:]

    def on_message_complete(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            self.waiter = None
            w.set_result(now())


# --------------------------------------------------------------------------- one process


class _Stats:
    def __init__(self) -> None:
        self.lat: list[float] = []  # seconds, 2xx requests sent in the window
        self.ttfb: list[float] = []
        self.gaps: list[float] = []  # per stream: longest gap between body chunks
        self.window_done = 0
        self.window_2xx = 0
        self.window_bytes = 0
        self.window_events = 0
        self.sent = 0
        self.completed = 0  # full responses (any status)
        self.completed_2xx = 0
        self.incomplete_streams = 0  # 2xx stream that did not end with [DONE]
        self.status: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.late_sends = 0  # open loop: sends after the intended time (server was busy)


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int, streaming: bool) -> _Conn:
    _, proto = await loop.create_connection(lambda: _Conn(streaming), host, port)
    return proto


async def _process_main(
    spec: LoadSpec, start_at: float, n_conns: int, rate: Optional[float], conn_offset: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host, port = spec.host_port()
    req = spec.request_bytes()
    streaming = spec.stream
    expect_done = spec.stream if spec.expect_done is None else spec.expect_done
    stats = _Stats()
    t_measure = start_at + spec.warmup_s
    t_end = t_measure + spec.duration_s
    conns: list[Optional[_Conn]] = [None] * n_conns
    stop_issuing = False
    timeout_s = spec.timeout_s

    async def open_conn(i: int) -> Optional[_Conn]:
        try:
            c = await _connect(loop, host, port, streaming)
        except OSError as exc:
            stats.errors[f"connect: {exc.__class__.__name__}"] += 1
            await asyncio.sleep(0.05)
            return None
        conns[i] = c
        return c

    # connect everything before the start time (in batches: no SYN flood of 1000)
    for b in range(0, n_conns, spec.connect_stagger):
        await asyncio.gather(*(open_conn(i) for i in range(b, min(n_conns, b + spec.connect_stagger))))

    async def one(i: int, c: _Conn, origin: Optional[float]) -> bool:
        """Send one request on c; record it.  Returns False when c is unusable."""
        c.reset()
        fut: asyncio.Future[float] = loop.create_future()
        c.waiter = fut
        t0 = now()
        c.t_start = t0 if origin is None else origin
        stats.sent += 1
        assert c.transport is not None
        c.transport.write(req)
        try:
            t_done = await fut
        except ConnectionError:
            stats.errors[c.error or "error"] += 1
            conns[i] = None
            if c.transport is not None:
                c.transport.abort()
            return False
        start = c.t_start
        status = c.status
        stats.completed += 1
        stats.status[status] += 1
        ok = 200 <= status < 300
        if ok:
            stats.completed_2xx += 1
            if expect_done and b"[DONE]" not in c.tail:
                stats.incomplete_streams += 1
        if t_measure <= t0 < t_end:  # in the window by actual send time (latency from `start`)
            stats.window_done += 1
            stats.window_bytes += c.nbytes
            if ok:
                stats.window_2xx += 1
                stats.lat.append(t_done - start)
                if streaming:
                    stats.window_events += c.events
                    stats.ttfb.append((c.t_first or t_done) - start)
                    stats.gaps.append(c.max_gap)
        if not c.keep_alive or c.closed:
            conns[i] = None
            if c.transport is not None:
                c.transport.close()
            return False
        return True

    async def sleep_until(t: float) -> None:
        # uvloop's timers have millisecond granularity and may fire a little early
        while True:
            delay = t - now()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    async def closed_worker(i: int) -> None:
        await sleep_until(start_at)
        while not stop_issuing and now() < t_end:
            c = conns[i]
            if c is None or c.closed:
                c = await open_conn(i)
                if c is None:
                    continue
            await one(i, c, None)

    async def open_worker(i: int) -> None:
        assert rate is not None
        # global schedule over all processes: connection g of C sends at start + (g + k*C) / R
        total_rate = spec.rate or rate
        interval = spec.concurrency / total_rate
        phase = start_at + (conn_offset + i) / total_rate
        k = 0
        free_at = start_at  # when this connection became idle
        while not stop_issuing:
            intended = phase + k * interval
            k += 1
            if intended >= t_end:
                break
            await sleep_until(intended)
            c = conns[i]
            if c is None or c.closed:
                c = await open_conn(i)
                if c is None:
                    free_at = now()
                    continue
            if free_at > intended:  # the server kept us busy past the intended time
                stats.late_sends += 1
                await one(i, c, intended)
            else:
                await one(i, c, None)
            free_at = now()

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(0.1)
            t = now()
            for c in conns:
                if c is not None and c.waiter is not None and not c.timed_out and t - c.t_start > timeout_s:
                    c.timed_out = True
                    if c.transport is not None:
                        c.transport.abort()

    wd = loop.create_task(watchdog())
    worker = open_worker if rate is not None else closed_worker
    tasks = [loop.create_task(worker(i)) for i in range(n_conns)]
    # stop issuing at t_end; in-flight requests finish (bounded by the timeout watchdog)
    await asyncio.sleep(max(0.0, t_end - now()))
    stop_issuing = True
    await asyncio.gather(*tasks)
    wd.cancel()
    for c in conns:
        if c is not None and c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0)
    return {
        "lat": stats.lat,
        "ttfb": stats.ttfb,
        "gaps": stats.gaps,
        "window_done": stats.window_done,
        "window_2xx": stats.window_2xx,
        "window_bytes": stats.window_bytes,
        "window_events": stats.window_events,
        "sent": stats.sent,
        "completed": stats.completed,
        "completed_2xx": stats.completed_2xx,
        "incomplete_streams": stats.incomplete_streams,
        "status": dict(stats.status),
        "errors": dict(stats.errors),
        "late_sends": stats.late_sends,
        "cpu_s": _self_cpu_s(),
    }


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _run_in_this_process(
    spec: LoadSpec, start_at: float, n_conns: int, rate: Optional[float], conn_offset: int
) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_process_main(spec, start_at, n_conns, rate, conn_offset))
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency
        return asyncio.run(_process_main(spec, start_at, n_conns, rate, conn_offset))


def _child(spec: LoadSpec, start_at: float, n_conns: int, rate: Optional[float], off: int, q: Any) -> None:
    try:
        q.put(_run_in_this_process(spec, start_at, n_conns, rate, off))
    except BaseException as exc:  # pragma: no cover - reported by the parent
        q.put({"fatal": repr(exc)})


# --------------------------------------------------------------------------- results


def summarize(values: Sequence[float], points: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """Percentiles (ms) of durations in seconds, plus mean and count."""
    n = len(values)
    out: dict[str, float] = {"count": float(n)}
    if n == 0:
        return out
    if HdrHistogram is not None:
        h = HdrHistogram(1, 3_600_000_000, 3)  # microseconds, up to an hour, 3 digits
        for v in values:
            h.record_value(max(1, int(v * 1e6)))
        for p in points:
            out[f"p{_pname(p)}"] = h.get_value_at_percentile(p) / 1000.0
        out["mean"] = h.get_mean_value() / 1000.0
        return out
    s = sorted(values)
    for p in points:
        rank = max(1, math.ceil(p / 100.0 * n))
        out[f"p{_pname(p)}"] = s[min(n, rank) - 1] * 1000.0
    out["mean"] = sum(s) / n * 1000.0
    return out


def _pname(p: float) -> str:
    return ("%g" % p).replace(".", "_")


def _merge(parts: list[dict[str, Any]], spec: LoadSpec, wall_s: float) -> dict[str, Any]:
    lat: list[float] = []
    ttfb: list[float] = []
    gaps: list[float] = []
    status: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    total = Counter[str]()
    cpu = 0.0
    for p in parts:
        if "fatal" in p:
            errors["loadgen process failed: " + p["fatal"]] += 1
            continue
        lat += p["lat"]
        ttfb += p["ttfb"]
        gaps += p["gaps"]
        status.update({int(k): v for k, v in p["status"].items()})
        errors.update(p["errors"])
        for k in ("window_done", "window_2xx", "window_bytes", "window_events", "sent", "completed",
                  "completed_2xx", "incomplete_streams", "late_sends"):
            total[k] += p[k]
        cpu += p["cpu_s"]
    d = spec.duration_s
    non2xx = sum(v for k, v in status.items() if not 200 <= k < 300)
    out: dict[str, Any] = {
        "tool": "python-loadgen",
        "hdrhistogram": HdrHistogram is not None,
        "url": spec.url,
        "mode": "open" if spec.rate else "closed",
        "concurrency": spec.concurrency,
        "rate": spec.rate,
        "stream": spec.stream,
        "duration_s": d,
        "warmup_s": spec.warmup_s,
        "processes": spec.processes,
        "requests": total["window_done"],
        "requests_2xx": total["window_2xx"],
        "rps": total["window_done"] / d if d > 0 else 0.0,
        "bytes_per_s": total["window_bytes"] / d if d > 0 else 0.0,
        "events_per_s": total["window_events"] / d if d > 0 else 0.0,
        "latency_ms": summarize(lat),
        "sent": total["sent"],
        "completed": total["completed"],
        "completed_2xx": total["completed_2xx"],
        "non2xx": non2xx,
        "status": {str(k): v for k, v in sorted(status.items())},
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "timeouts": errors.get("timeout", 0),
        "late_sends": total["late_sends"],
        "loadgen_cpu_s": cpu,
        "wall_s": wall_s,
    }
    if spec.stream:
        out["ttfb_ms"] = summarize(ttfb)
        out["max_gap_ms"] = summarize(gaps, (50.0, 99.0, 100.0))
        out["incomplete_streams"] = total["incomplete_streams"]
        # a stall: a started stream that did not end (error, timeout, cut short)
        out["stalled_streams"] = total["incomplete_streams"] + (total["sent"] - total["completed"])
    return out


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run the load described by ``spec``; returns the merged result dict."""
    procs = max(1, min(spec.processes, spec.concurrency))
    spec = dataclasses.replace(spec, processes=procs)
    t_wall = now()
    if procs == 1:
        start_at = now() + 0.2 + spec.concurrency / 2000.0
        parts = [_run_in_this_process(spec, start_at, spec.concurrency, spec.rate, 0)]
    else:
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        start_at = now() + 1.5 + spec.concurrency / 2000.0
        children = []
        off = 0
        for j in range(procs):
            n = spec.concurrency // procs + (1 if j < spec.concurrency % procs else 0)
            r = spec.rate * n / spec.concurrency if spec.rate else None
            pr = ctx.Process(target=_child, args=(spec, start_at, n, r, off, q), daemon=True)
            pr.start()
            children.append(pr)
            off += n
        parts = [q.get() for _ in children]
        for pr in children:
            pr.join()
    return _merge(parts, spec, now() - t_wall)


# --------------------------------------------------------------------------- CLI


def _fmt(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    lines = [
        f"{r['mode']} loop, {r['concurrency']} connections"
        + (f", {r['rate']:g} req/s" if r["rate"] else "")
        + f", {r['duration_s']:g} s (+{r['warmup_s']:g} s warm-up), {r['processes']} process(es)",
        f"requests {r['requests']}  ({r['rps']:.1f}/s)   non-2xx {r['non2xx']}   errors {r['error_count']}"
        f"   timeouts {r['timeouts']}",
        "latency ms: " + "  ".join(
            f"p{k[1:].replace('_', '.')}={v:.3f}" for k, v in lat.items() if k.startswith("p")
        ),
    ]
    if r["stream"]:
        t = r["ttfb_ms"]
        lines.append("ttfb ms:    " + "  ".join(
            f"p{k[1:].replace('_', '.')}={v:.3f}" for k, v in t.items() if k.startswith("p")
        ))
        lines.append(
            f"events/s {r['events_per_s']:.0f}  bytes/s {r['bytes_per_s']:.0f}  "
            f"incomplete {r['incomplete_streams']}  stalled {r['stalled_streams']}  "
            f"max gap ms {r['max_gap_ms'].get('p100', 0):.1f}"
        )
    lines.append(
        f"sent {r['sent']} completed {r['completed']} 2xx {r['completed_2xx']}  "
        f"loadgen cpu {r['loadgen_cpu_s']:.2f} s / wall {r['wall_s']:.2f} s"
    )
    if r["errors"]:
        lines.append(f"errors: {r['errors']}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--method", default="POST")
    ap.add_argument("--body", default="", help="request body (text); @FILE reads a file")
    ap.add_argument("-H", "--header", action="append", default=[], help="'name: value' (repeatable)")
    ap.add_argument("-c", "--concurrency", type=int, default=1, help="connections")
    ap.add_argument("--rate", type=float, default=None, help="open loop: total requests/s")
    ap.add_argument("-d", "--duration-s", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--stream", action="store_true", help="streaming responses (SSE)")
    ap.add_argument("--no-expect-done", action="store_true", help="streams need not end with [DONE]")
    ap.add_argument("--timeout-s", type=float, default=30.0)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--json-out", help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    body = args.body
    if body.startswith("@"):
        with open(body[1:], "rb") as f:
            body_b = f.read()
    else:
        body_b = body.encode()
    headers = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            ap.error(f"bad header {h!r}: expected 'name: value'")
        headers.append((name.strip(), value.strip()))
    spec = LoadSpec(
        url=args.url, method=args.method, body=body_b, headers=headers,
        concurrency=args.concurrency, rate=args.rate, duration_s=args.duration_s,
        warmup_s=args.warmup_s, stream=args.stream,
        expect_done=False if args.no_expect_done else None, timeout_s=args.timeout_s,
        processes=args.processes,
    )
    result = run_load(spec)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text)
    print(text if args.json else _fmt(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``plano-fast serve --workers N``: the parent restarts a worker that dies (issue 26).

Over real sockets: two workers, one SIGKILLed (its pid found among the parent's children),
requests keep being answered by the other, a new worker appears and serves on the same
port, the metrics still add up (the dead worker's counters kept), a second death soon after
waits longer (crash-loop back-off), and SIGTERM to the parent still stops everything.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from plano_fast.metrics import Merged, read_snapshots, retire_snapshot
from tests.gateway_proc import GatewayProcess
from tests.test_http_protocol import connect, read_response, request
from tests.test_metrics import ADMIN_KEY, scrape


def children(pid: int) -> set[int]:
    """The live worker processes among ``pid``'s children (from /proc; zombies not yet
    reaped excluded, and multiprocessing's resource tracker, the parent's other child)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        out.update(int(c) for c in text.split())
    live = set()
    for child in out:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if state != "Z" and b"resource_tracker" not in cmdline:
            live.add(child)
    return live


def answered(port: int) -> int:
    """One request on a new connection (closed by the server after the answer): its status."""
    with connect(port) as sock:
        sock.sendall(request(extra=b"Connection: close\r\n"))
        response, _ = read_response(sock)
        return int(response.status_code)


def requests_total(gateway: GatewayProcess) -> float:
    fams = scrape(gateway)
    return sum(s.value for s in fams["plano_fast_requests"].samples if s.name == "plano_fast_requests_total")


def metrics_dir(pid: int) -> str:
    """Where the instance's workers publish their snapshots (the parent's temp dir, passed
    in the environment)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [entry] = [e for e in environ if e.startswith(b"PLANO_FAST_METRICS_DIR=")]
    return entry.split(b"=", 1)[1].decode()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_killed_worker_is_replaced_and_the_instance_keeps_serving(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    gateway = make_gateway({"admin_port": 0, "admin_key": ADMIN_KEY, "metrics_publish_interval_s": 0.25}, workers=2)
    parent = gateway.proc.pid
    workers = children(parent)
    assert workers == set(gateway.pids) and len(workers) == 2  # the workers, nothing else
    served = 0
    for _ in range(10):
        assert answered(gateway.port) == 200
        served += 1
    # Both workers publish their snapshot (every 0.25 s): a fixed wait, not a poll, since
    # the victim's last snapshot must hold all its requests before it is killed.
    time.sleep(1.0)
    assert requests_total(gateway) == served

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    # Once the parent has reaped it, the dead worker's listening socket is gone from the
    # port's group (a connection the kernel had queued for it before is reset: README).
    wait_for(lambda: f"(pid {victim}) died" in gateway.log_text(), 10, "the parent to reap the killed worker")
    # The survivor answers everything meanwhile, on the same port.
    for _ in range(20):
        assert answered(gateway.port) == 200
        served += 1
    wait_for(lambda: len(children(parent)) == 2, 15, "a new worker")
    replacement = (children(parent) - workers).pop()
    wait_for(lambda: "worker" in gateway.log_text() and f"pid {replacement}" in gateway.log_text(), 5, "the log")
    log = gateway.log_text()
    assert re.search(rf"worker \d \(pid {victim}\) died \(killed by SIGKILL\) after [\d.]+ s; restarting in 0\.5 s", log)
    assert re.search(rf"worker \d restarted \(pid {replacement}\)", log)
    # Until the replacement is ready, the kernel sends every connection to the survivor; then
    # both share the port again: keep asking until the replacement has answered some.
    # The replacement starts (imports, store) and publishes a first snapshot.
    snapshot = Path(metrics_dir(replacement)) / f"{replacement}.json"
    wait_for(snapshot.exists, 10, "the replacement's first snapshot")
    for _ in range(40):
        assert answered(gateway.port) == 200
        served += 1
    # A scrape lands on either worker: the dead one's counts are kept.  Within 2.5 s (both
    # publish every 0.25 s) four scrapes in a row count every request.
    wait_for(lambda: all(requests_total(gateway) == served for _ in range(4)), 2.5,
             f"four scrapes counting the {served} requests")

    # Killed again within the stable uptime: a crash loop, the wait doubles.
    os.kill(replacement, signal.SIGKILL)
    wait_for(lambda: f"(pid {replacement}) died" in gateway.log_text(), 10, "the second death")
    assert re.search(rf"\(pid {replacement}\) died \(killed by SIGKILL\) after [\d.]+ s; restarting in 1\.0 s",
                     gateway.log_text())
    wait_for(lambda: len(children(parent)) == 2, 15, "another new worker")
    assert answered(gateway.port) == 200

    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(20) == 0
    assert time.monotonic() - started < 15
    assert not Path(f"/proc/{parent}").exists() or children(parent) == set()


def test_a_dead_workers_snapshot_keeps_its_counters_and_loses_its_gauges(tmp_path: Path) -> None:
    snap = {"requests": [[["firewall", "openai", "m", "chat_completions", "2xx"], 7]],
            "process": {"rows_written": 5, "client_connections": 3, "usage_backlog": 9, "last_flush_s": 1.5}}
    (tmp_path / "4242.json").write_text(json.dumps(snap))
    (tmp_path / "4343.json").write_text(json.dumps({"process": {"client_connections": 1, "rows_written": 1}}))
    retire_snapshot(tmp_path, 4242)
    retire_snapshot(tmp_path, 999)  # never published: nothing to do
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4343.json", "retired-4242.json"]
    merged = Merged()
    for other in read_snapshots(tmp_path):
        merged.add(other)
    assert merged.requests == {("firewall", "openai", "m", "chat_completions", "2xx"): 7}
    assert merged.process == {"rows_written": 6, "client_connections": 1}


def test_a_worker_failing_at_the_first_start_stops_the_instance(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """No restart loop for a configuration that cannot serve: the instance exits, as one
    worker would (here managed mode without its master key)."""
    with pytest.raises(RuntimeError, match="PLANO_FAST_MASTER_KEY") as info:
        make_gateway({"managed": "true"}, env={"PLANO_FAST_MASTER_KEY": ""}, workers=2)
    assert "failed to start (exit code 1); stopping" in str(info.value)
    assert "restarting in" not in str(info.value)

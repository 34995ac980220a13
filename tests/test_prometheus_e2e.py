"""A real Prometheus server scraping a ``--workers 2`` gateway (issue 21): the number of
requests sent comes back exactly from Prometheus's own queries (``sum``, ``increase`` and
``sum(rate(...))``), no counter ever looks reset, and every query of the Grafana dashboard
runs and names a series Prometheus stored.

Needs the ``prometheus`` binary (Debian's package; ``.ci/run`` installs it): skipped with a
message where it is absent, a failure under PLANO_FAST_TEST_REQUIRE_ALL=1.

Exactness: ``increase()`` and ``rate()`` extrapolate to the edges of their window unless a
sample sits on each edge.  The window is therefore taken from the stored samples
themselves -- from the last scrape before the requests to the last scrape after them --
and the queries are evaluated at that last scrape's time: Prometheus then computes
(last - first) with nothing extrapolated, and any counter that went down between two
scrapes (a scrape answered by the other worker with older numbers) would show as a reset
and break the count.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway_proc import ROOT, GatewayProcess

ADMIN_KEY = "admin-key-for-prometheus-e2e-0123456789"
SCRAPE_INTERVAL_MS = 1000
SERIES = "plano_fast_requests_total"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A private Prometheus: its own port, storage directory and scrape config."""

    def __init__(self, binary: str, workdir: Path, admin_port: int) -> None:
        (workdir / "admin_key").write_text(ADMIN_KEY)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_MS}ms\n"
            "  scrape_timeout: 900ms\n"
            "scrape_configs:\n"
            "  - job_name: plano_fast\n"
            "    authorization:\n"
            f"      credentials_file: {workdir / 'admin_key'}\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{admin_port}']\n"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.log_path = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait_for(lambda: self._get("/-/ready") is not None, "Prometheus ready", 20)

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return bytes(resp.read())
        except OSError:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            return None

    def api(self, path: str, **params: str) -> Any:
        body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert body is not None, f"Prometheus did not answer {path} {params}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str, **params: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, **params)
        return list(data["result"])

    def scalar(self, expr: str, **params: str) -> float | None:
        result = self.query(expr, **params)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus; .ci/run installs it)")
    return binary


def totals_by_scrape(prom: Prometheus) -> dict[int, float]:
    """The stored samples of the last 60 s, summed over the series of each scrape:
    scrape time (ms) -> requests counted.  One target: every series of a scrape shares
    its timestamp, and every series exists after the warm-up."""
    totals: dict[int, float] = {}
    for series in prom.query(f"{SERIES}[60s]"):
        for ts, value in series["values"]:
            ms = round(float(ts) * 1000)
            totals[ms] = totals.get(ms, 0.0) + float(value)
    return totals


def send(client: openai.OpenAI, models: list[str], n: int) -> None:
    for i in range(n):
        stream = i % 2 == 1
        reply = client.chat.completions.create(
            model=models[i % len(models)], messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        if stream:
            for _ in reply:  # type: ignore[union-attr]
                pass


def test_prometheus_counts_the_requests_of_two_workers_exactly(
    prometheus_binary: str, make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway = make_gateway({"admin_port": 0, "admin_key": ADMIN_KEY}, workers=2)
    prom = Prometheus(prometheus_binary, tmp_path, gateway.admin_port)
    try:
        models = ["gpt-4o-mini", "claude-sonnet-4-6"]
        warm = len(models)
        sent = random.randint(30, 40)
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
            send(client, models, warm)  # every series exists from here on
            prom.wait_for(lambda: prom.scalar(f"sum({SERIES})") == warm, f"sum({SERIES}) == {warm}", 15)
            # the last scrape before the counted requests: the window's first sample
            before = totals_by_scrape(prom)
            start_ms = max(before)
            assert before[start_ms] == warm
            send(client, models, sent)
        total = warm + sent
        prom.wait_for(lambda: prom.scalar(f"sum({SERIES})") == total, f"sum({SERIES}) == {total}", 15)
        time.sleep(2 * SCRAPE_INTERVAL_MS / 1000)  # two more scrapes: each worker answers with the total
        after = totals_by_scrape(prom)
        end_ms = max(after)
        assert after[end_ms] == total
        # Counters never go down between scrapes, whichever worker answered them.
        series = sorted(after.items())
        assert all(b >= a for (_, a), (_, b) in zip(series, series[1:])), series
        window = f"[{end_ms - start_ms}ms]"
        at = {"time": f"{end_ms / 1000:.3f}"}
        assert prom.scalar(f"sum(resets({SERIES}{window}))", **at) == 0
        assert prom.scalar(f"sum(increase({SERIES}{window}))", **at) == sent
        rate = prom.scalar(f"sum(rate({SERIES}{window}))", **at)
        assert rate is not None and rate * (end_ms - start_ms) / 1000 == pytest.approx(sent, rel=1e-9)
        by_model = {
            r["metric"]["model"]: float(r["value"][1])
            for r in prom.query(f"sum by (model) (increase({SERIES}{window}))", **at)
        }
        assert by_model == {m: float(len(range(i, sent, len(models)))) for i, m in enumerate(models)}

        # Every series the Grafana dashboard queries is stored, and every query runs
        # (after one refusal, so errors_total has a series).
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0) as client:
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        prom.wait_for(lambda: prom.scalar('sum(plano_fast_errors_total{type="client"})') == 1, "errors_total", 15)
        stored = set(prom.api("label/__name__/values"))
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "plano_fast.json").read_text())
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        named = {name for expr in exprs for name in re.findall(r"plano_fast_[a-z_]+", expr)}
        assert named - stored == set()
        for expr in exprs:
            prom.query(expr.replace("$__rate_interval", "10s"))  # status "success" or it fails
        duration = prom.query("sum(rate(plano_fast_request_duration_seconds_count[30s]))")
        assert duration and float(duration[0]["value"][1]) > 0
    finally:
        prom.stop()

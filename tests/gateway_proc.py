"""Run the real gateway as a subprocess (``python -m plano_fast serve``) for tests."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent


def _migrate(config_path: Path, env: dict[str, str]) -> None:
    """What ``plano-fast migrate --config`` does, in this process: the same functions
    (load_config, run_migrate), without a Python start per gateway (~0.4 s).  Where the
    result could differ -- an event loop already running here, or a relative path that
    the subprocess (run from the repository) would resolve elsewhere -- the CLI runs."""
    import asyncio

    from plano_fast.config import load_config
    from plano_fast.store.migrate import run_migrate

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        config = load_config(str(config_path), env=env)
        settings = config.settings
        if settings.database_url or os.path.isabs(settings.sqlite_path) or Path.cwd() == ROOT:
            asyncio.run(run_migrate(settings.database_url, settings.sqlite_path))
            return
    subprocess.run(
        [sys.executable, "-m", "plano_fast", "migrate", "--config", str(config_path)],
        check=True, cwd=ROOT, capture_output=True, env=env,
    )


class GatewayProcess:
    """A gateway started from a config file; ``url`` is ready once constructed."""

    def __init__(
        self,
        config_path: Path,
        *,
        workers: int = 1,
        log_path: Path | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int = 0,
        migrate: bool = True,
        before_start: Callable[[], object] | None = None,
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path or config_path.with_suffix(".log")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # ``serve --migrate`` applies the same migrations before it listens, saving a Python
        # start (~0.4 s a gateway); a separate ``migrate`` runs only when ``before_start``
        # needs the schema before the gateway starts.
        migrate_in_serve = migrate and before_start is None
        if migrate and not migrate_in_serve:
            _migrate(config_path, {**os.environ, **(env or {})})
        if before_start is not None:
            before_start()  # e.g. provision tenants, so the gateway loads them at start
        args = [sys.executable, "-m", "plano_fast", "serve", "--config", str(config_path)]
        args += ["--port", str(port), "--workers", str(workers)] + (["--migrate"] if migrate_in_serve else [])
        args += extra_args or []
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT, env=full_env
        )
        self.port = 0
        self.admin_port = 0
        self.pids: list[int] = []
        self._wait_ready(workers)
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, workers: int, timeout_s: float = 30.0) -> None:
        """Wait for every worker's readiness line (matched anywhere in the output, so
        lines from several processes sharing the pipe may arrive in any grouping)."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        out = ""
        pattern = re.compile(
            r"listening on (\S+):(\d+) \(pid (\d+)[^)]*\)(?:; admin API on \S+:(\d+))?"
        )
        while True:
            found = pattern.findall(out)
            if len({pid for _, _, pid, _ in found}) >= workers and out.endswith("\n"):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"gateway did not start (stdout: {out!r}): "
                    f"{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            if not sel.select(min(remaining, 0.5)):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if chunk:
                out += chunk.decode(errors="replace")
        sel.close()
        for _, port, pid, admin_port in found:
            self.port = int(port)
            self.pids.append(int(pid))
            if admin_port:
                self.admin_port = int(admin_port)

    def rss_kib(self, pid: int | None = None) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the gateway process in KiB."""
        status = Path(f"/proc/{pid or self.pids[0]}/status").read_text()
        values = {}
        for line in status.splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
        return values["VmRSS"], values["VmHWM"]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def write_config(
    path: Path,
    fake_port: int,
    settings: dict[str, object] | None = None,
    extra_providers: str = "",
    listener_timeout: str = "5s",
) -> Path:
    """The test config: every provider points at the fake provider on ``fake_port``."""
    base = f"http://127.0.0.1:{fake_port}"
    merged: dict[str, object] = {
        "sqlite_path": path.with_suffix(".db"),
        "usage_journal_path": path.with_suffix(".journal"),
        # The billing loops run often in tests (10 s by default): rows are written and
        # priced within 0.2 s (a test waiting for its rows waits that long, not ~1 s),
        # budgets checked every second.  A test about a flush's timing sets its own.
        "usage_flush_interval_s": 0.2,
        "price_interval_s": 0.2,
        "budget_check_interval_s": 1,
    }
    merged.update(settings or {})
    extra = "".join(f"  {k}: {v}\n" for k, v in merged.items())
    path.write_text(
        f"""\
version: v0.4.0
listeners:
  - type: model
    name: test_listener
    address: 127.0.0.1
    port: 12000
    timeout: {listener_timeout}
model_providers:
  - model: openai/gpt-4o-mini
    base_url: {base}
    access_key: sk-server-openai-key
    default: true
  - model: openai/*
    base_url: {base}
    access_key: sk-server-openai-key
  - model: anthropic/claude-sonnet-4-6
    base_url: {base}
    access_key: sk-ant-server-key
  - name: anthropic-passthrough
    model: anthropic/claude-passthrough
    base_url: {base}
    passthrough_auth: true
  - model: vllm/llama-passthrough
    base_url: {base}
    provider_interface: openai
    passthrough_auth: true
  - model: down/unreachable-model
    base_url: http://127.0.0.1:9
    provider_interface: openai
    access_key: sk-unused
{extra_providers}model_aliases:
  fast:
    target: openai/gpt-4o-mini
plano_fast:
{extra}"""
    )
    return path

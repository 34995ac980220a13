"""LiteLLM proxy baseline (only with ``benchmarks/run.py --with-litellm``).

Creates its own virtualenv under ``benchmarks/.litellm-venv`` (gitignored; kept between
runs), installs a pinned ``litellm[proxy]`` there -- never into the gateway's venv -- writes
a proxy config with a master key whose single model points at the fake provider, and runs
``litellm --config ... --port P`` until stopped.

Pinned version: LITELLM_VERSION below (1.99.4: releases from 1.104 on require a
``certifi`` newer than the package index here offers, so they do not install).  Releases 1.82.7, 1.82.8 and 1.107.0 were
compromised on PyPI and are refused here even if asked for with ``--litellm-version``.

Anything that fails (no network, wheel build failure, the proxy not starting) raises
:class:`LiteLLMUnavailable` with the reason; the benchmark then reports
"LiteLLM: not available (reason)" instead of a number.

    python -m benchmarks.litellm_setup [--version X]     # install (or check) only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from benchmarks._server_proc import ServerProcess

__all__ = ["LITELLM_VERSION", "LiteLLMProxy", "LiteLLMUnavailable", "ensure_litellm", "VENV"]

LITELLM_VERSION = "1.99.4"
COMPROMISED = frozenset({"1.82.7", "1.82.8", "1.107.0"})
MASTER_KEY = "sk-bench-litellm-master"
HERE = Path(__file__).resolve().parent
VENV = HERE / ".litellm-venv"


class LiteLLMUnavailable(RuntimeError):
    """LiteLLM cannot be installed or started here; str() is the reason."""


def _run(cmd: list[str], log: Path, timeout_s: float) -> None:
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        try:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise LiteLLMUnavailable(f"'{' '.join(cmd[:4])} ...' timed out after {timeout_s:.0f} s") from None
    if r.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise LiteLLMUnavailable(f"'{' '.join(cmd[:4])} ...' failed (exit {r.returncode}): {' | '.join(tail)}")


def installed_version(venv: Path = VENV) -> Optional[str]:
    py = venv / "bin" / "python"
    if not py.exists():
        return None
    r = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_litellm(version: str = LITELLM_VERSION, venv: Path = VENV, log: Optional[Path] = None) -> Path:
    """The ``litellm`` executable of ``venv`` with ``litellm[proxy]==version`` installed."""
    if version in COMPROMISED:
        raise LiteLLMUnavailable(f"litellm {version} is a known-compromised release; refusing to install it")
    log = log or Path(tempfile.gettempdir()) / "plano-bench-litellm-install.log"
    exe = venv / "bin" / "litellm"
    if installed_version(venv) == version and exe.exists():
        return exe
    if not (venv / "bin" / "python").exists():
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run([base, "-m", "venv", str(venv)], log, 120)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    _run(pip + ["install", "-q", "--upgrade", "pip"], log, 300)
    _run(pip + ["install", "-q", f"litellm[proxy]=={version}"], log, 900)
    got = installed_version(venv)
    if got != version or not exe.exists():
        raise LiteLLMUnavailable(f"installed litellm is {got!r}, wanted {version}")
    return exe


def write_litellm_config(path: Path, fake_port: int, model: str = "gpt-4o-mini") -> Path:
    path.write_text(f"""\
# written by benchmarks/litellm_setup.py
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{fake_port}/v1
      api_key: sk-fake-upstream
general_settings:
  master_key: {MASTER_KEY}
litellm_settings:
  drop_params: true
  set_verbose: false
  telemetry: false
""")
    return path


class LiteLLMProxy(ServerProcess):
    """The LiteLLM proxy server on ``port``, pointed at the fake provider."""

    master_key = MASTER_KEY

    def __init__(self, fake_port: int, port: int, workdir: Path, *, version: str = LITELLM_VERSION,
                 workers: int = 1, start_timeout_s: float = 180.0) -> None:
        exe = ensure_litellm(version, log=workdir / "litellm-install.log")
        self.version = version
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config = write_litellm_config(workdir / "litellm_config.yaml", fake_port)
        self.log_path = workdir / "litellm.log"
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.update({
            "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True",
            "LITELLM_MODE": "PRODUCTION", "NO_DOCS": "True",
        })
        env.pop("DATABASE_URL", None)
        self.proc = subprocess.Popen(
            [str(exe), "--config", str(self.config), "--host", "127.0.0.1", "--port", str(port),
             "--num_workers", str(workers)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
            start_new_session=True,
        )
        self._wait_ready(start_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LiteLLMUnavailable(f"litellm exited with {self.proc.returncode}: {self._tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health/liveliness", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise LiteLLMUnavailable(f"litellm did not become ready in {timeout_s:.0f} s: {self._tail()}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.litellm_setup", description=__doc__.split("\n")[0])
    ap.add_argument("--version", default=LITELLM_VERSION)
    args = ap.parse_args(argv)
    try:
        exe = ensure_litellm(args.version)  # its log: the temporary directory
    except LiteLLMUnavailable as exc:
        print(f"LiteLLM: not available ({exc})", file=sys.stderr)
        return 1
    print(f"LiteLLM {installed_version()} ready: {exe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

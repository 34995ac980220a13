"""Portkey AI gateway baseline (only with ``benchmarks/run.py --with-portkey``).

Installs the pinned npm package ``@portkey-ai/gateway`` (PORTKEY_VERSION, MIT licence) into
its own folder ``benchmarks/.portkey`` (gitignored; kept between runs) with the machine's
npm -- never into the project -- and runs its Node server
(``node build/start-server.js --port=P --headless``: one Node process, as Portkey ships it)
until stopped.  Requests reach the fake provider through Portkey's documented headers
``x-portkey-provider: openai`` and ``x-portkey-custom-host: http://127.0.0.1:<fake>/v1``.

Its dependencies are those of Portkey's own lock file where they matter (``PINNED``, through
npm ``overrides``): the npm package carries no lock file, and the newest ``@hono/node-server``
1.x that npm picks otherwise breaks every streaming request (see ``PINNED``).

Where node or npm is missing, or the install or start fails, :class:`PortkeyUnavailable`
carries the reason and the benchmark reports "Portkey: not available (reason)".

    python -m benchmarks.portkey_setup      # install (or check) only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from benchmarks._server_proc import ServerProcess

__all__ = ["PORTKEY_VERSION", "PortkeyGateway", "PortkeyUnavailable", "ensure_portkey", "portkey_headers"]

PORTKEY_VERSION = "1.15.2"
HERE = Path(__file__).resolve().parent
PREFIX = HERE / ".portkey"
PACKAGE = "@portkey-ai/gateway"
#: Versions Portkey's lock file (package-lock.json at its v1.15.2 tag, what its Docker image
#: installs) resolves, forced with npm ``overrides``.  The npm package has no lock file, and
#: its ``"@hono/node-server": "^1.3.3"`` resolves to the newest 1.x (1.19.19 on 2026-12-05),
#: whose lightweight Response keeps a fetch() response's immutable headers when Portkey wraps
#: the provider's stream in ``new Response(stream, upstream)``: every streaming request then
#: fails with 500 {"status":"failure","message":"Something went wrong"} and "TypeError:
#: immutable" at ResponseService.updateHeaders in Portkey's log (Portkey-AI/gateway issues
#: 1389 and 1550).  With 1.13.5, streams are answered 200.
PINNED: dict[str, str] = {"@hono/node-server": "1.13.5"}


class PortkeyUnavailable(RuntimeError):
    """Portkey cannot be installed or started here; str() is the reason."""


def installed_version(prefix: Path = PREFIX, package: str = PACKAGE) -> Optional[str]:
    manifest = prefix / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def resolved_version(prefix: Path, dependency: str) -> Optional[str]:
    """The version of ``dependency`` that Node loads for Portkey: a copy nested under
    Portkey's own node_modules first, else the hoisted one."""
    return installed_version(prefix / "node_modules" / PACKAGE, dependency) or installed_version(prefix, dependency)


def install_problems(version: str = PORTKEY_VERSION, prefix: Path = PREFIX) -> list[str]:
    """How the install under ``prefix`` differs from what the benchmark runs (empty: none)."""
    problems = []
    got = installed_version(prefix)
    if got != version:
        problems.append(f"{PACKAGE} is {got!r}, wanted {version}")
    elif not (prefix / "node_modules" / PACKAGE / "build" / "start-server.js").exists():
        problems.append(f"{PACKAGE} has no build/start-server.js")
    for dep, want in PINNED.items():
        have = resolved_version(prefix, dep)
        if have != want:
            problems.append(f"{dep} is {have!r}, wanted {want}")
    return problems


def write_manifest(version: str, prefix: Path) -> None:
    """The install folder's package.json: Portkey at ``version`` with ``PINNED`` as overrides
    (a lock file of an earlier install is removed, so npm resolves them afresh)."""
    manifest = {"private": True, "description": "benchmarks/portkey_setup.py: the Portkey baseline",
                "dependencies": {PACKAGE: version}, "overrides": dict(PINNED)}
    (prefix / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (prefix / "package-lock.json").unlink(missing_ok=True)


def ensure_portkey(version: str = PORTKEY_VERSION, prefix: Path = PREFIX, log: Optional[Path] = None) -> Path:
    """The server script of ``@portkey-ai/gateway@version`` installed under ``prefix``."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise PortkeyUnavailable(f"{tool} is not installed")
    script = prefix / "node_modules" / PACKAGE / "build" / "start-server.js"
    if not install_problems(version, prefix):
        return script
    prefix.mkdir(parents=True, exist_ok=True)
    write_manifest(version, prefix)
    log = log or Path(tempfile.gettempdir()) / "plano-bench-portkey-install.log"
    cmd = ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund"]
    with open(log, "ab") as f:
        try:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=600)
        except subprocess.TimeoutExpired:
            raise PortkeyUnavailable("npm install timed out after 600 s") from None
    if r.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise PortkeyUnavailable(f"npm install failed (exit {r.returncode}): {tail}")
    problems = install_problems(version, prefix)
    if problems:
        raise PortkeyUnavailable("after npm install: " + "; ".join(problems))
    return script


def portkey_headers(fake_port: int) -> list[tuple[str, str]]:
    """What a client sends Portkey to reach the fake provider as an OpenAI endpoint."""
    return [
        ("authorization", "Bearer sk-bench-portkey"),
        ("x-portkey-provider", "openai"),
        ("x-portkey-custom-host", f"http://127.0.0.1:{fake_port}/v1"),
    ]


class PortkeyGateway(ServerProcess):
    """Portkey's Node server on ``port``."""

    def __init__(self, port: int, workdir: Path, *, version: str = PORTKEY_VERSION,
                 start_timeout_s: float = 60.0) -> None:
        script = ensure_portkey(version, log=workdir / "portkey-install.log")
        self.version = version
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "portkey.log"
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, NODE_ENV="production")
        self.proc = subprocess.Popen(
            ["node", str(script), f"--port={port}", "--headless"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True,
        )
        self._wait_ready(start_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PortkeyUnavailable(f"portkey exited with {self.proc.returncode}: {self._tail()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1) as r:
                    if r.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise PortkeyUnavailable(f"portkey did not become ready in {timeout_s:.0f} s: {self._tail()}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.portkey_setup", description=__doc__.split("\n")[0])
    ap.add_argument("--version", default=PORTKEY_VERSION)
    args = ap.parse_args(argv)
    try:
        script = ensure_portkey(args.version)
    except PortkeyUnavailable as exc:
        print(f"Portkey: not available ({exc})", file=sys.stderr)
        return 1
    pins = ", ".join(f"{d} {resolved_version(PREFIX, d)}" for d in PINNED)
    print(f"Portkey {installed_version()} ready ({pins}): {script}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

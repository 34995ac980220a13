"""nginx ``proxy_pass`` baseline for the benchmarks.

Writes an nginx.conf under a temporary prefix -- one worker process (the comparison is
against a one-worker gateway), an upstream keep-alive pool (``keepalive 64``,
``proxy_http_version 1.1``, ``proxy_set_header Connection ""``), ``proxy_buffering off``
so SSE is relayed as it arrives, access log off -- and runs ``nginx -g 'daemon off;'``
in the foreground.  :func:`nginx_binary` is None when nginx is not installed; the
benchmark then skips this baseline with a message.

    python -m benchmarks.nginx --upstream-port 9000 [--port 8080]   # run until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

__all__ = ["NginxProxy", "nginx_binary", "write_nginx_conf"]


def nginx_binary() -> Optional[str]:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
         if os.access(p, os.X_OK)),
        None,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_nginx_conf(prefix: Path, port: int, upstream_port: int, *, workers: int = 1,
                     upstream_host: str = "127.0.0.1") -> Path:
    for d in ("logs", "tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = f"""\
# written by benchmarks/nginx.py
{user}worker_processes {workers};
worker_rlimit_nofile 65536;
pid {prefix}/logs/nginx.pid;
error_log {prefix}/logs/error.log warn;

events {{
    worker_connections 16384;
    multi_accept on;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 32m;

    upstream fake_provider {{
        server {upstream_host}:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake_provider;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering on;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


class NginxProxy:
    """nginx in the foreground, proxying to ``upstream_port``; ``url`` once started."""

    def __init__(self, upstream_port: int, *, port: int = 0, workers: int = 1,
                 prefix: Optional[Path] = None) -> None:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed")
        self._own_prefix = prefix is None
        self.prefix = Path(prefix or tempfile.mkdtemp(prefix="plano-bench-nginx-"))
        self.port = port or free_port()
        self.conf = write_nginx_conf(self.prefix, self.port, upstream_port, workers=workers)
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.prefix / "logs/error.log"),
             "-g", "daemon off; master_process on;"],
            stdout=subprocess.DEVNULL, stderr=open(self.prefix / "logs/stderr.log", "wb"),
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        out = ""
        for name in ("stderr.log", "error.log"):
            p = self.prefix / "logs" / name
            if p.exists():
                out += p.read_text(errors="replace")
        return out

    def version(self) -> str:
        binary = nginx_binary()
        if not binary:
            return "not installed"
        r = subprocess.run([binary, "-v"], capture_output=True, text=True)
        return (r.stderr or r.stdout).strip().replace("nginx version: ", "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._own_prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> "NginxProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nginx", description=__doc__.split("\n")[0])
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    if nginx_binary() is None:
        print("nginx is not installed", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with NginxProxy(args.upstream_port, port=args.port, workers=args.workers) as proxy:
        print(f"nginx listening on 127.0.0.1:{proxy.port} (prefix {proxy.prefix})", flush=True)
        try:
            proxy.proc.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

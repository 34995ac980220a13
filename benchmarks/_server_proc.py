"""A baseline server the benchmark starts in its own session and stops with its children
(LiteLLM's uvicorn workers, Portkey's Node process)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import IO


class ServerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    def _tail(self) -> str:
        """The last lines of its log, for an error message."""
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])

    def stop(self) -> None:
        """SIGTERM to the whole session, SIGKILL after 15 s."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self._log.close()

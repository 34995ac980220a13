"""Type hints are checked as part of the suite (mypy --strict over the package)."""

from __future__ import annotations

import subprocess
import sys

from tests.gateway_proc import ROOT


def test_mypy_strict_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "plano_fast"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""``make bench-tools`` (run by ``make bench`` as root): it installs only the missing
baseline tools and leaves an nginx that was already on the machine running.

The system tools it calls (``id``, ``apt-get``, ``service``, ``pkill``, ``nginx``, ``wrk``)
are stand-ins on ``PATH`` that record their arguments: the recipe itself is the one in
the Makefile, run by make."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho \"{name} $*\" >> \"$CALLS\"\n{body}\n")
    path.chmod(0o755)


def _run(tmp_path: Path, present: tuple[str, ...]) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    _tool(bin_dir, "id", "echo 0")  # root
    _tool(bin_dir, "apt-get", "exit 0")
    _tool(bin_dir, "service", "exit 0")
    _tool(bin_dir, "pkill", "exit 0")
    for name in present:
        _tool(bin_dir, name, "exit 0")
    assert MAKE is not None
    env = {"PATH": str(bin_dir), "CALLS": str(calls), "HOME": os.environ.get("HOME", "/tmp")}
    subprocess.run([MAKE, "-s", "-C", str(ROOT), "bench-tools"], env=env, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    return calls.read_text().splitlines()


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_an_nginx_already_there_is_left_running(tmp_path: Path) -> None:
    # wrk missing, the machine's own nginx installed (and serving): only wrk is installed,
    # and nothing stops or kills nginx
    calls = _run(tmp_path, ("nginx",))
    assert [c for c in calls if c.startswith("apt-get install")] == ["apt-get install -y -q wrk"]
    assert not [c for c in calls if c.startswith(("service", "pkill", "nginx"))], calls


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_the_installed_packages_nginx_service_is_stopped(tmp_path: Path) -> None:
    # nginx missing: nginx-light installed, and the service its package started stopped
    calls = _run(tmp_path, ("wrk",))
    assert [c for c in calls if c.startswith("apt-get install")] == ["apt-get install -y -q nginx-light"]
    assert "service nginx stop" in calls
    assert not [c for c in calls if c.startswith("pkill")], calls


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_nothing_is_done_when_both_are_there(tmp_path: Path) -> None:
    assert _run(tmp_path, ("wrk", "nginx")) == []

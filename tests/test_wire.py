"""plano_fast.wire, the one selector of the compiled modules and their twins: one switch
(PLANO_FAST_PURE_SCANNER=1) picks the pure build of all three, the report covers all three,
and the gateway's modules take their implementation from it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from plano_fast import wire

ROOT = pathlib.Path(__file__).resolve().parent.parent

try:
    from plano_fast.wire import _head, _request, _scan
except ImportError:  # the extensions are not built
    BUILT = False
else:
    BUILT = True


def run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != wire.PURE_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip()


def test_the_switch_selects_the_pure_build_of_all_three() -> None:
    code = (
        "from plano_fast import wire\n"
        "from plano_fast.wire import _head_py, _scan_py\n"
        "assert wire.UsageScanner is _scan_py.UsageScanner and wire.scan_request is _scan_py.scan_request\n"
        "assert wire.response_head is _head_py.response_head\n"
        "assert wire.forward_request_headers is _head_py.forward_request_headers\n"
        "assert wire.parse_request is None and wire.parse_response_head is None\n"
        "print(wire.IMPLEMENTATION, sorted(wire.IMPLEMENTATIONS.items()))"
    )
    out = run(code, PLANO_FAST_PURE_SCANNER="1")
    assert out == "python [('head', 'python'), ('request', 'python'), ('scan', 'python')]"


@pytest.mark.skipif(not BUILT, reason="extension not built")
def test_the_compiled_modules_are_used_when_built() -> None:
    if os.environ.get(wire.PURE_ENV) == "1":
        pytest.skip("pure scanner forced by the environment")
    assert wire.IMPLEMENTATIONS == {"scan": "cython", "head": "cython", "request": "cython"}
    assert wire.IMPLEMENTATION == "cython"
    assert wire.UsageScanner is _scan.UsageScanner and wire.rewrite_request is _scan.rewrite_request
    assert wire.response_head is _head.response_head
    assert wire.forward_request_headers is _head.forward_request_headers
    assert wire.parse_request is _request.parse_request
    assert wire.parse_response_head is _head.parse_response_head


@pytest.mark.skipif(not BUILT, reason="extension not built")
def test_a_missing_module_falls_back_alone_and_the_report_says_so() -> None:
    code = (
        "import sys\n"
        "sys.modules['plano_fast.wire._head'] = None  # as if it had not been built\n"
        "from plano_fast import wire\n"
        "from plano_fast.wire import _head_py, _scan\n"
        "assert wire.response_head is _head_py.response_head and wire.UsageScanner is _scan.UsageScanner\n"
        "print(wire.IMPLEMENTATION)"
    )
    assert run(code) == "mixed (scan=cython, head=python, request=cython)"


def test_the_gateway_takes_its_implementations_from_the_selector() -> None:
    from plano_fast import credentials, http_server, upstream

    assert http_server._parse_request is wire.parse_request
    assert upstream.response_head is wire.response_head
    assert upstream._parse_response is wire.parse_response_head
    assert credentials.forward_request_headers is wire.forward_request_headers


def test_the_wire_package_imports_only_the_standard_library_and_itself() -> None:
    """A pure core: no asyncio, no I/O module, nothing else of the gateway (read from the
    sources, compiled ones included, so it holds for every implementation)."""
    import re

    # (ipaddress: a pure parser, the DLP scanner's IP-address validator; bisect and time:
    # the observability twin's bucket search and time stamps -- gmtime/strftime of a given
    # reading, no clock read)
    allowed = {"__future__", "collections", "json", "os", "re", "typing", "cython", "libc", "cpython", "ipaddress",
               "bisect", "time"}
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "plano_fast" / "wire").iterdir()):
        if path.suffix not in (".py", ".pyx", ".pxi", ".pxd", ".pyi"):
            continue
        text = path.read_text()
        names = re.findall(r"^\s*(?:from\s+(\S+)\s+c?import|c?import\s+(\S+))", text, re.MULTILINE)
        found[path.name] = {(a or b).rstrip(",") for a, b in names}
    assert "_scan.pyx" in found and "_scan_py.py" in found and "__init__.py" in found
    for name, modules in found.items():
        bad = {m for m in modules if m.split(".")[0] not in allowed and not m.startswith("plano_fast.wire")}
        assert not bad, (name, bad)

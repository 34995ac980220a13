"""Round h: the compiled request passes against the pure build on generated adversarial
requests (tests/differential_h.py: odd header case and spacing, duplicate credentials in
several places, two Content-Lengths, CL+TE, chunked bodies, obs-fold, CTL bytes, names
near the 8-byte boundaries of the lowercase pass, account headers, JSON bodies with a
duplicate or escaped ``model``, trailing data, a BOM, lone surrogates; two requests
pipelined in one write, and writes split at a random byte).

A compiled gateway and a pure one (``PLANO_FAST_PURE_SCANNER=1``), each with its own
recording upstream, get the same seeded requests over real sockets; the status lines and
heads and bodies each client reads (but for dates, request ids, and the JSON parsers'
own wording of a syntax error), what each upstream receives, and the usage rows must be
the same.  The seeds are fixed (a failure reproduces); ``PLANO_FAST_HYPOTHESIS=deep``
runs 40x more (tests/hypothesis_budget.py).
"""

from __future__ import annotations

import collections
import functools
import os
import random
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plano_fast.wire import PURE_ENV
from tests.differential_h import fixed, requests
from tests.gateway_proc import GatewayProcess, write_config
from tests.hypothesis_budget import examples
from tests.test_firewall import setup_keys
from tests.test_plain_request import RecordingUpstream, recording_pair
from tests.test_whole_answer import _normalized, _read_answer, _usage

pytest.importorskip("plano_fast.gateway._forward", reason="the Cython extension is not built")
if os.environ.get(PURE_ENV) == "1":  # both gateways would run the twins
    pytest.skip("pure scanner forced by the environment", allow_module_level=True)

#: the JSON parsers word a syntax error each their own way (orjson / the pure scanner)
_JSON_ERROR = re.compile(rb'"message":"request body is not valid JSON: [^"]*"')


@pytest.fixture
def upstreams() -> Iterator[tuple[RecordingUpstream, RecordingUpstream]]:
    yield from recording_pair(RecordingUpstream)


def _answers(gateway: GatewayProcess, data: bytes, count: int, split: int | None) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        if split:
            sock.sendall(data[:split])
            time.sleep(0.01)  # (two reads on the gateway's side)
            sock.sendall(data[split:])
        else:
            sock.sendall(data)
        buf = bytearray()
        out = []
        for _ in range(count):
            raw = _read_answer(sock, buf)
            if not raw:
                break  # (closed after an error: both must close)
            answer = _normalized(raw)
            if _JSON_ERROR.search(answer):
                answer = re.sub(rb"content-length: \d+\r\n", b"content-length: <n>\r\n",
                                _JSON_ERROR.sub(b'"message":"<json error>"', answer))
            out.append(answer)
        return out


def _differential(mode: str, tmp_path: Path, upstreams: tuple[RecordingUpstream, RecordingUpstream],
                  seed: int) -> collections.Counter[bytes]:
    gateways: list[GatewayProcess] = []
    dbs: list[str] = []
    for name, upstream, env in (("compiled", upstreams[0], {}), ("pure", upstreams[1], {PURE_ENV: "1"})):
        db = str(tmp_path / f"{name}.db")
        if mode == "firewall":
            config = write_config(tmp_path / f"{name}.yaml", upstream.port, {"mode": "firewall"})
            url = f"http://127.0.0.1:{upstream.port}/base"
            gateways.append(GatewayProcess(config, env=env, before_start=functools.partial(setup_keys, db, url)))
        else:
            gateways.append(GatewayProcess(write_config(tmp_path / f"{name}.yaml", upstream.port), env=env))
        dbs.append(db)
    rng = random.Random(seed)
    statuses: collections.Counter[bytes] = collections.Counter()
    with gateways[0], gateways[1]:
        pool = [(data, 1) for data in fixed(mode)]
        pool += [requests(rng, mode) for _ in range(examples(35, deep=2000))]
        for data, count in pool:
            split = rng.randrange(1, len(data)) if rng.random() < 0.2 else None
            seen = [len(u.seen) for u in upstreams]
            compiled = _answers(gateways[0], data, count, split)
            twin = _answers(gateways[1], data, count, split)
            assert compiled == twin, data
            assert upstreams[0].seen[seen[0]:] == upstreams[1].seen[seen[1]:], data
            statuses.update(a[:12] for a in compiled)
    # Read once both gateways have stopped (a stop drains the usage queue): every row each
    # wrote, not the first ``forwarded`` to land while one still had rows in flight.
    forwarded = statuses[b"HTTP/1.1 200"]
    assert _usage(dbs[0], forwarded) == _usage(dbs[1], forwarded)
    return statuses


@pytest.mark.parametrize("mode", ["firewall", "config"])
def test_generated_requests_get_the_twins_answers(mode: str, tmp_path: Path,
                                                  upstreams: tuple[RecordingUpstream, RecordingUpstream]) -> None:
    statuses = _differential(mode, tmp_path, upstreams, seed={"firewall": 8, "config": 9}[mode])
    # the comparison means something only if both forwarded and refused requests came up
    assert statuses[b"HTTP/1.1 200"] >= 5, statuses
    assert statuses[b"HTTP/1.1 400"] >= 5 and statuses[b"HTTP/1.1 401"] + statuses[b"HTTP/1.1 404"] >= 3, statuses

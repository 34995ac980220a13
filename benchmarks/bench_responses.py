"""Added cost of a converted Responses API request vs a native request, through the gateway.

One gateway worker (config mode) in front of the fake provider; a keep-alive client sends
``--requests`` sequential requests of each kind and the gateway's own CPU time
(``/proc/<pid>/stat`` utime + stime of the gateway's process tree) is divided by the count:
CPU microseconds per request, independent of the client's and the fake provider's cost
(both run in this process, not in the gateway's).  Each kind is measured ``--rounds`` times
and the median reported.  The kinds:

* ``chat native``:      /v1/chat/completions -> an OpenAI-compatible provider (bytes pass)
* ``responses->chat``:  /v1/responses -> the same provider's chat completions (converted)
* ``messages native``:  /v1/messages -> Anthropic (bytes pass)
* ``chat->messages``:   /v1/chat/completions -> Anthropic (the existing conversion)
* ``responses->messages``: /v1/responses -> Anthropic

each JSON and streamed (8 content events, the fake provider's default).  With ``--state
TYPE`` (``memory``, ``sqlite``; Plano's ``state_storage``) every Responses answer is stored,
and one more kind continues a stored one-turn conversation:

* ``responses->chat turn 2``: ``previous_response_id`` read, expanded, converted, stored

    .venv/bin/python -m benchmarks.bench_responses [--requests 2000] [--rounds 3] [--state sqlite]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.fake_provider import FakeProviderThread
from benchmarks.run import cpu_s, proc_tree
from tests.gateway_proc import GatewayProcess, write_config

EXTRA = (
    "  - model: deepseek/deepseek-chat\n"
    "    base_url: http://127.0.0.1:{port}/v1\n"
    "    access_key: sk-deepseek-key\n"
)
PROMPT = "Summarise the plot of Hamlet in two sentences."


def kinds(stream: bool) -> dict[str, tuple[str, dict[str, object]]]:
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
            "max_tokens": 200, "stream": stream}
    if stream:
        chat["stream_options"] = {"include_usage": True}
    resp = {"instructions": "Be brief.", "input": PROMPT, "max_output_tokens": 200, "stream": stream}
    msgs = {"system": "Be brief.", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 200,
            "stream": stream}
    return {
        "chat native": ("/v1/chat/completions", {"model": "deepseek-chat", **chat}),
        "responses->chat": ("/v1/responses", {"model": "deepseek-chat", **resp}),
        "messages native": ("/v1/messages", {"model": "claude-sonnet-4-6", **msgs}),
        "chat->messages": ("/v1/chat/completions", {"model": "claude-sonnet-4-6", **chat}),
        "responses->messages": ("/v1/responses", {"model": "claude-sonnet-4-6", **resp}),
    }


def run(conn: http.client.HTTPConnection, path: str, body: bytes, n: int) -> None:
    headers = {"content-type": "application/json", "authorization": "Bearer sk-c",
               "anthropic-version": "2023-06-01"}
    for _ in range(n):
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {data[:300]!r}")


def _first_id(conn: http.client.HTTPConnection) -> str:
    body = json.dumps({"model": "deepseek-chat", "input": PROMPT, "max_output_tokens": 200}).encode()
    conn.request("POST", "/v1/responses", body, {"content-type": "application/json", "authorization": "Bearer sk-c"})
    resp = conn.getresponse()
    rid: str = json.loads(resp.read())["id"]
    return rid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--state", choices=("memory", "sqlite"), default=None,
                    help="state_storage type (default: none)")
    args = ap.parse_args()
    with FakeProviderThread(record=False) as fake, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp) / "plano_config.yaml", fake.port, extra_providers=EXTRA.format(port=fake.port))
        if args.state:
            config.write_text(config.read_text() + f"state_storage:\n  type: {args.state}\n")
        with GatewayProcess(config) as gw:
            pids = proc_tree(gw.proc.pid)
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
            results: dict[str, float] = {}
            for stream in (False, True):
                todo = kinds(stream)
                if args.state:
                    first = _first_id(conn)
                    path, doc = todo["responses->chat"]
                    todo["responses->chat turn 2"] = (path, {**doc, "previous_response_id": first})
                for name, (path, doc) in todo.items():
                    body = json.dumps(doc).encode()
                    run(conn, path, body, 200)  # warm up
                    samples = []
                    for _ in range(args.rounds):
                        c0 = cpu_s(pids)
                        run(conn, path, body, args.requests)
                        samples.append((cpu_s(pids) - c0) / args.requests * 1e6)
                    label = f"{name} ({'stream' if stream else 'json'})"
                    results[label] = statistics.median(samples)
                    print(f"{label:34s} {results[label]:8.1f} us CPU/request  "
                          f"(rounds: {', '.join(f'{s:.1f}' for s in samples)})", flush=True)
            conn.close()
    for mode in ("json", "stream"):
        base = results[f"chat native ({mode})"]
        conv = results[f"responses->chat ({mode})"]
        print(f"responses->chat vs chat native ({mode}): +{conv - base:.1f} us/request")
        conv_m = results[f"responses->messages ({mode})"]
        ref_m = results[f"chat->messages ({mode})"]
        print(f"responses->messages vs chat->messages ({mode}): {conv_m - ref_m:+.1f} us/request")


if __name__ == "__main__":
    main()

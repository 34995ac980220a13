"""Round h's differential generator: adversarial client requests, seeded, for a compiled
gateway and a pure one (``PLANO_FAST_PURE_SCANNER=1``) to be compared on (tests/test_differential_h.py,
benchmarks/attack_battery_h.py)."""

from __future__ import annotations

import json
import random

from tests.test_firewall import ANT_KEY, OTHER_KEY, USER_KEY

_CASES = (b"authorization", b"Authorization", b"AUTHORIZATION", b"aUTHORIZATION", b"authorizatioN")


def _case_variant(rng: random.Random, name: bytes) -> bytes:
    pick = rng.randrange(4)
    if pick == 0:
        return name
    if pick == 1:
        return name.upper()
    if pick == 2:
        return name.title()
    return bytes(c ^ 32 if 97 <= (c | 32) <= 122 and rng.random() < 0.5 else c for c in name)


def _body(rng: random.Random) -> bytes:
    model = rng.choice(["gpt-4o-mini", "gpt-4o-mini", "openai/gpt-4.1", "claude-sonnet-4-6", "fast", "nope/x"])
    msgs = b'[{"role":"user","content":"hi"}]'
    pick = rng.randrange(20)
    m = json.dumps(model).encode()
    if pick == 0:
        return b'{"model":' + m + b',"model":"gpt-4o","messages":' + msgs + b"}"
    if pick == 1:
        return b'{"mod\\u0065l":' + m + b',"messages":' + msgs + b"}"
    if pick == 2:
        return b'{"model":"gpt\\u002d4o-mini","messages":' + msgs + b"}"
    if pick == 3:
        return b'{"messages":[{"role":"user","content":"x","model":"gpt-4o"}],"model":' + m + b"}"
    if pick == 4:
        return b'{"stream":false,"model":' + m + b',"stream":true,"messages":' + msgs + b"}"
    if pick == 5:
        return b'{"model":' + m + b',"messages":' + msgs + b',"usage":{"prompt_tokens":1},"stream":true}'
    if pick == 6:
        return b'{"model":' + m + b',"messages":' + msgs + b',"stream_options":{"include_usage":false},"stream":true,"stream_options":null}'
    if pick == 7:
        return b' \n{"model" : ' + m + b' , "messages":' + msgs + b'}\n '
    if pick == 8:
        return b'{"model":' + m + b',"messages":' + msgs + b'}{"model":"gpt-4o"}'
    if pick == 9:
        return b'\xef\xbb\xbf{"model":' + m + b',"messages":' + msgs + b"}"
    if pick == 10:
        return b'{"model":' + m + b',"messages":' + msgs + b',"n":1e400}'
    if pick == 11:
        return b'{"model":"gpt-4o-mini\\ud800","messages":' + msgs + b"}"
    if pick == 12:
        return b'{"model":' + m + b',"messages":' + msgs + b',"x":"\\u0000\x7f"}'
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "stream": rng.random() < 0.3}).encode()


def requests(rng: random.Random, mode: str) -> tuple[bytes, int]:
    """One generated request, or two pipelined in one write: (bytes, how many)."""
    if rng.random() < 0.15:
        return request(rng, mode) + request(rng, mode), 2
    return request(rng, mode), 1


def request(rng: random.Random, mode: str) -> bytes:
    """One generated request."""
    key = USER_KEY.encode() if mode == "firewall" else b"sk-client-own"
    body = _body(rng)
    path = b"/v1/chat/completions" if rng.random() < 0.7 else rng.choice([b"/chat/completions",
                       b"/v1/chat/completions?key=" + key, b"/v1/chat/completions?x=%00",
                       b"/v1/chat/completions/", b"/v1//chat/completions", b"/V1/chat/completions",
                       b"/v1/chat/completions#frag", b"/v1/messages", b"/v1/chat/completions?api-key=abc"])
    lines: list[bytes] = [_case_variant(rng, b"host") + b": gw"]
    if rng.random() < 0.05:
        lines.append(b"Host: other")
    if rng.random() < 0.9:
        scheme = b"Bearer " if rng.random() < 0.7 else rng.choice([b"bearer ", b"BEARER ", b"Bearer  ", b"Bearer\t", b"Basic ",
                             b"", b"Bearer"])
        lines.append(_case_variant(rng, b"authorization") + rng.choice([b": ", b":", b":\t", b":  "]) + scheme + key)
    extra = rng.randrange(16)
    if extra == 0:
        lines.append(b"Authorization: Bearer " + rng.choice([key, OTHER_KEY.encode()]))
    elif extra == 1:
        lines.append(_case_variant(rng, rng.choice([b"x-api-key", b"api-key", b"x-goog-api-key", b"x_api_key",
                                                     b"api_key", b"x_goog_api_key"])) + b": " + key)
    elif extra == 2:
        lines.append(_case_variant(rng, rng.choice([b"openai-organization", b"anthropic-organization-id",
                                                     b"ocp-apim-subscription-key", b"x-ms-region",
                                                     b"openai-project", b"x-goog-user-project",
                                                     b"openai_organization"])) + b": acct")
    elif extra == 3:
        lines.append(_case_variant(rng, b"x-request-id") + b": " + rng.choice([b"abc", b"a\x01b", b"", b"x" * 200]))
    elif extra == 4:
        lines.append(b"X-Obs: a\r\n folded")
    elif extra == 5:
        lines.append(_case_variant(rng, rng.choice([b"proxy-authorization", b"x-xproxy-project", b"te",
                                                     b"keep-alive", b"x-http-method-override",
                                                     b"accept-encoding", b"anthropic-version"])) + b": gzip")
    elif extra == 6:
        lines.append(b"x-" + b"A" * rng.choice([5, 6, 7, 8, 13, 14, 15, 16, 22, 23, 24]) + b": v")
    elif extra == 7:
        lines.append(b"X-Ctl: a" + bytes([rng.choice([0, 1, 8, 11, 127, 0x80, 0xff])]) + b"b")
    elif extra == 8:
        lines.append(b"Connection: " + rng.choice([b"close", b"Keep-Alive", b"keep-alive, x-foo", b"x-foo",
                                                   b"authorization"]))
    cl = b"%d" % len(body)
    framing = rng.randrange(24)
    if framing == 0:
        lines.append(b"Content-Length: " + cl)
        lines.append(b"content-length: " + cl)
        frame = body
    elif framing == 1:
        lines.append(b"Content-Length: " + cl)
        lines.append(b"Transfer-Encoding: chunked")
        frame = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    elif framing == 2:
        lines.append(b"Transfer-Encoding: chunked")
        frame = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    elif framing == 3:
        lines.append(b"Content-Length: +" + cl)
        frame = body
    elif framing == 4:
        lines.append(b"Content-Length: 0" + cl)
        frame = body
    else:
        lines.append(_case_variant(rng, b"content-length") + b": " + cl)
        frame = body
    rng.shuffle(lines)
    lines.insert(0, b"POST " + path + b" HTTP/1.1")
    return b"\r\n".join(lines) + b"\r\n\r\n" + frame


def fixed(mode: str) -> list[bytes]:
    """Hand-picked edges beside the generated ones: heads around the 32 KiB limit (one
    header, or many), HTTP/1.0, absolute and asterisk targets, lowercase and body-carrying
    methods, encoded paths, credential-like query names, odd Host / Content-Length /
    Connection / Expect / Upgrade / credential / request-id / version lines."""
    key = b"authorization: Bearer %s\r\n" % (USER_KEY.encode() if mode == "firewall" else b"sk-client-own")
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'

    def req(extra: bytes = b"", target: bytes = b"/v1/chat/completions", method: bytes = b"POST",
            version: bytes = b"HTTP/1.1", auth: bytes = key) -> bytes:
        return (method + b" " + target + b" " + version + b"\r\nhost: gw\r\n" + auth + extra
                + b"content-length: %d\r\n\r\n%s" % (len(body), body))

    out = []
    for size in (32 * 1024 - 200, 32 * 1024 - 90, 32 * 1024 - 80, 32 * 1024, 40_000):
        out.append(req(b"x-pad: " + b"a" * size + b"\r\n"))
        out.append(req(b"".join(b"x-p%05d: %s\r\n" % (i, b"b" * 40) for i in range(size // 50))))
    out += [req(version=b"HTTP/1.0"), req(b"connection: keep-alive\r\n", version=b"HTTP/1.0"),
            req(target=b"http://gw/v1/chat/completions"), req(target=b"*"), req(method=b"GET"),
            req(method=b"post"), req(target=b"/v1/chat%2Fcompletions"), req(target=b"/v1/x/../chat/completions"),
            req(target=b"/v1/chat/completions?"), req(target=b"/v1/chat/completions?key"),
            req(target=b"/v1/chat/completions?KEY=abc"), req(target=b"/v1/chat/completions?api_key=abc"),
            req().replace(b"host: gw", b"host: g w"), req().replace(b"host: gw", b"host:"),
            req().replace(b"content-length: ", b"content-length:  "),
            req().replace(b"content-length: %d" % len(body), b"content-length: %d\t" % len(body)),
            req(b"transfer-encoding: identity\r\n"), req(b"upgrade: h2c\r\nconnection: upgrade\r\n"),
            req(b"connection: close, keep-alive\r\n"), req(b"connection: keep-alive\r\nconnection: close\r\n"),
            req(auth=key + key), req(auth=b"authorization:\r\n"), req(auth=b"authorization: Bearer \r\n"),
            req(auth=b"authorization: Bearer sk-\xc3\xa9\r\n"), req(b"x-request-id: " + b"a" * 128 + b"\r\n"),
            req(b"x_request_id: abc\r\nx-request-id: def\r\n"), req(b"anthropic-version: 1\r\nanthropic-version: 2\r\n"),
            req(b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"),
            req(b"traceparent: zz\r\n")]
    return out

"""Instructions per call: parse_response_head on a provider-like answer (22 header lines), and
the relay's coded-answer test on its kept block.  argv: N (calls), what (head|coded|none)."""
import sys
from plano_fast.wire import _head
n, what = int(sys.argv[1]), sys.argv[2]
body = b'{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":1}}'
head = (b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 12:00:00 GMT\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: keep-alive\r\naccess-control-expose-headers: X-Request-ID\r\n"
        b"openai-organization: org-x\r\nopenai-processing-ms: 412\r\nopenai-project: proj_x\r\nopenai-version: 2020-10-01\r\n"
        b"x-envoy-upstream-service-time: 415\r\nx-ratelimit-limit-requests: 10000\r\nx-ratelimit-limit-tokens: 200000\r\n"
        b"x-ratelimit-remaining-requests: 9999\r\nx-ratelimit-remaining-tokens: 199990\r\nx-ratelimit-reset-requests: 6ms\r\n"
        b"x-ratelimit-reset-tokens: 3ms\r\nx-request-id: req_0123456789abcdef\r\nstrict-transport-security: max-age=31536000\r\n"
        b"cf-cache-status: DYNAMIC\r\nset-cookie: __cf_bm=abc; path=/\r\nx-content-type-options: nosniff\r\nserver: cloudflare\r\n"
        b"cf-ray: 8f00000000000000-AMS\r\nalt-svc: h3=\":443\"\r\n\r\n") % len(body)
data = head + body
block = _head.parse_response_head(data, 65536)[0].block
parse = _head.parse_response_head
if what == "head":
    for _ in range(n):
        parse(data, 65536)
elif what == "coded":
    for _ in range(n):
        if _head.has_content_encoding(block):
            pass
else:
    for _ in range(n):
        pass

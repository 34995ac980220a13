"""Firewall mode tried as an attacker would (issue 17): one credential per request, only
the endpoints the gateway meters, strict paths, no duplicate members, 100-continue only
after the key checks out -- each refusal over real sockets, with the fake provider's
request count unchanged, and ``/auth/check`` giving the data plane's verdict."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config
from tests.test_billing_e2e import read_rows
from tests.test_firewall import ANT_KEY, OTHER_KEY, USER_KEY, setup_keys, sha
from tests.test_managed import managed  # noqa: F401 - fixture

ADMIN_KEY = "admin-key-for-hardening-tests-0123456789"
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
CHAT_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture(scope="module")
def hardened(fake: FakeProviderThread, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One firewall gateway (admin API on) for the module: (gateway, sqlite path, project)."""
    config = write_config(
        tmp_path_factory.mktemp("fw-hard") / "plano_config.yaml",
        fake.port,
        {"mode": "firewall", "key_registry_reload_s": 1, "admin_port": 0,
         "admin_key": "$PLANO_FAST_TEST_ADMIN"},
    )  # fmt: skip
    sqlite_path = str(config.with_suffix(".db"))
    projects: list[str] = []
    proc = GatewayProcess(
        config,
        env={"PLANO_FAST_TEST_ADMIN": ADMIN_KEY},
        before_start=lambda: projects.append(setup_keys(sqlite_path, fake.url)),
    )
    yield proc, sqlite_path, projects[0]
    proc.stop()


def raw_request(port: int, head: bytes, body: bytes = b"", read_all: bool = True) -> tuple[int, bytes, bytes]:
    """Send ``head`` (request line + headers, no blank line) and ``body`` on a fresh
    connection; returns (status, response head, response body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        framing = b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) if read_all else b"\r\n"
        sock.sendall(head + b"\r\n" + framing + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_out, _, body_out = data.partition(b"\r\n\r\n")
    return int(head_out.split(b" ", 2)[1]), head_out, body_out


def provider_calls(fake: FakeProviderThread) -> list[Any]:
    return [r for r in fake.requests if not r.path.startswith("/_fake")]


def credentials_seen(request: Any) -> list[tuple[str, str]]:
    return [(n, v) for n, v in request.headers if n in CREDENTIAL_HEADERS]


def post_chat(gateway: GatewayProcess, headers: list[bytes], path: bytes = b"/v1/chat/completions",
              body: bytes = CHAT_BODY) -> tuple[int, bytes, bytes]:
    head = b"POST " + path + b" HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json"
    for line in headers:
        head += b"\r\n" + line
    return raw_request(gateway.port, head, body)


def auth_check(gateway: GatewayProcess, headers: list[bytes], query: bytes = b"", path: bytes = b"") -> int:
    method = b"POST" if path else b"GET"
    head = method + b" /auth/check" + path + (b"?" + query if query else b"") + b" HTTP/1.1\r\nhost: gw"
    for line in headers:
        head += b"\r\n" + line
    return raw_request(gateway.admin_port, head)[0]


REGISTERED = USER_KEY.encode()
UNREGISTERED = OTHER_KEY.encode()


# -- credential smuggling ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        # registered x-api-key verified, Connection drops it, unregistered Bearer forwarded (was 200)
        ([b"x-api-key: " + REGISTERED, b"Connection: x-api-key", b"Authorization: Bearer " + UNREGISTERED], b""),
        # two Authorization headers (was: both forwarded)
        ([b"Authorization: Bearer " + REGISTERED, b"Authorization: Bearer " + UNREGISTERED], b""),
        ([b"Authorization: Bearer " + REGISTERED, b"Authorization: Bearer " + REGISTERED], b""),
        # Basic credential + registered x-api-key (was: Basic forwarded)
        ([b"Authorization: Basic dXNlcjpwYXNz", b"x-api-key: " + REGISTERED], b""),
        # header + ?key= (was: header verified, query key forwarded)
        ([b"Authorization: Bearer " + REGISTERED], b"key=" + UNREGISTERED),
        ([b"x-goog-api-key: " + REGISTERED], b"ke%79=" + UNREGISTERED),
        ([], b"key=" + REGISTERED + b"&KEY=" + UNREGISTERED),
        ([b"api-key: " + REGISTERED, b"X-Api-Key: " + UNREGISTERED], b""),
        # underscore spellings (CGI/WSGI servers read x_api_key as x-api-key)
        ([b"Authorization: Bearer " + REGISTERED, b"x_api_key: " + UNREGISTERED], b""),
        ([b"x-goog-api-key: " + REGISTERED, b"X_GOOG_API_KEY: " + UNREGISTERED], b""),
        # Google's OAuth access_token query parameter
        ([b"x-goog-api-key: " + REGISTERED], b"alt=sse&access_token=ya29.attacker"),
    ],
)
def test_more_than_one_credential_is_refused_and_never_forwarded(
    hardened: Any, fake: FakeProviderThread, headers: list[bytes], query: bytes
) -> None:
    gateway, _, _ = hardened
    fake.clear()
    path = b"/v1/chat/completions" + (b"?" + query if query else b"")
    status, _, body = post_chat(gateway, headers, path)
    assert status == 401, body
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_api_key" and "credentials" in error["message"]
    assert USER_KEY not in body.decode() and OTHER_KEY not in body.decode()
    assert provider_calls(fake) == []
    assert auth_check(gateway, headers, query) == 401


@pytest.mark.parametrize(
    "line",
    [
        b"Authorization: Basic " + REGISTERED,  # only Bearer carries a key
        b"Authorization: Bearer",
        b"x-api-key: ",
        b"x-api-key: sk-\xff\xfe-not-utf8",  # was: /auth/check 500, data plane 401
        b"Authorization: Bearer sk-a b",
        # RFC 9110 11.4: only spaces between scheme and token (1*SP), never a tab
        b"Authorization: Bearer\t" + REGISTERED,
        b"Authorization: Bearer \t" + REGISTERED,  # was: 200 (the tab stripped with the spaces)
        b"Authorization: bearer\t " + REGISTERED,
    ],
)  # (a lone ?access_token= is refused too: see test_query_key_moves_to_the_gemini_header)
def test_malformed_credential_is_401_on_both_paths(hardened: Any, fake: FakeProviderThread, line: bytes) -> None:
    gateway, _, _ = hardened
    fake.clear()
    assert post_chat(gateway, [line])[0] == 401
    assert auth_check(gateway, [line]) == 401
    assert provider_calls(fake) == []


def test_one_credential_is_forwarded_once_in_the_header_it_came_in(
    hardened: Any, fake: FakeProviderThread
) -> None:
    gateway, _, _ = hardened
    cases = [
        (b"authorization: bEaReR   " + REGISTERED, [("authorization", "Bearer " + USER_KEY)]),
        (b"X-Api-Key: " + ANT_KEY.encode(), [("x-api-key", ANT_KEY)]),
        (b"x-goog-api-key: " + REGISTERED, [("x-goog-api-key", USER_KEY)]),
        (b"api-key: " + REGISTERED, [("api-key", USER_KEY)]),
    ]
    for line, expected in cases:
        fake.clear()
        # Connection naming the credential changes nothing: it is verified and written back.
        status, _, body = post_chat(gateway, [line, b"Connection: " + line.split(b":")[0]])
        assert status == 200, body
        (seen,) = provider_calls(fake)
        assert credentials_seen(seen) == expected
        assert seen.header_all("host") == [f"127.0.0.1:{fake.port}"]  # the registered upstream's, once


def test_query_key_moves_to_the_gemini_header(hardened: Any, fake: FakeProviderThread) -> None:
    gateway, _, _ = hardened
    fake.clear()
    head = (b"POST /v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=" + REGISTERED
            + b" HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json")  # fmt: skip
    status, _, _ = raw_request(gateway.port, head, b'{"contents":[{"parts":[{"text":"hi"}]}]}')
    assert status == 200
    (seen,) = provider_calls(fake)
    assert seen.path.endswith(":streamGenerateContent?alt=sse")
    assert credentials_seen(seen) == [("x-goog-api-key", USER_KEY)]
    # an OAuth token in the query is never taken as the key
    fake.clear()
    head = (b"POST /v1beta/models/gemini-2.5-flash:generateContent?access_token=" + REGISTERED
            + b" HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json")  # fmt: skip
    assert raw_request(gateway.port, head, b'{"contents":[]}')[0] == 401
    # an underscore spelling alone is the credential, written back as the header it means
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            b"x_api_key: " + REGISTERED + b"\r\nX-HTTP-Method-Override: GET")  # fmt: skip
    assert raw_request(gateway.port, head, CHAT_BODY)[0] == 200
    (seen,) = provider_calls(fake)
    assert credentials_seen(seen) == [("x-api-key", USER_KEY)]
    assert seen.header("x-http-method-override") is None


#: Query parameter names a provider (or a proxy before it) could read as a credential: a NUL
#: or ``[]`` after ``key``, Google's ``$key`` system-parameter form (plain and encoded),
#: Cloud Endpoints' ``api_key``, Azure's ``api-key`` / ``subscription-key``, Google's OAuth
#: spellings, ``key`` encoded twice, the credential headers' names, ``token`` and its kin.
CREDENTIAL_LIKE_QUERY_NAMES = [b"key%00", b"key[]", b"key%5B%5D", b"$key", b"%24key", b"api_key", b"API-KEY",
                               b"subscription-key", b"oauth_token", b"bearer_token", b"access%5Ftoken",
                               b"%256Bey", b"k%2565y", b"x-goog-api-key",
                               # x-api-key's and Azure APIM's header names, other services' spellings
                               b"x-api-key", b"x_api_key", b"ocp-apim-subscription-key", b"api_token", b"token",
                               b"access_key"]


@pytest.mark.parametrize("name", CREDENTIAL_LIKE_QUERY_NAMES)
def test_a_credential_like_query_parameter_is_refused_and_never_forwarded(
    hardened: Any, fake: FakeProviderThread, name: bytes
) -> None:
    """Was: only a name decoding to ``key`` or ``access_token`` counted, so ``?key%00=``,
    ``?key[]=``, ``?$key=`` (Google's documented system-parameter form) or ``?api_key=``
    went to the provider beside the verified header key: a second, unchecked credential.
    Now each is a credential; with a header key it makes two (401), alone it is not taken as
    the key (401); Gemini's error format; /auth/check agrees; nothing forwarded."""
    gateway, _, _ = hardened
    gemini = b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&"
    body = b'{"contents":[{"parts":[{"text":"hi"}]}]}'
    for headers, query in (([b"x-goog-api-key: " + REGISTERED], name + b"=" + UNREGISTERED),
                           ([], name + b"=" + REGISTERED)):
        fake.clear()
        status, _, answer = post_chat(gateway, headers, gemini + query, body)
        assert status == 401, (name, answer)
        assert json.loads(answer)["error"]["status"] == "UNAUTHENTICATED", answer  # Gemini's format
        assert USER_KEY not in answer.decode() and OTHER_KEY not in answer.decode()
        assert provider_calls(fake) == [], name
        assert auth_check(gateway, headers, b"alt=sse&" + query) == 401


@pytest.mark.parametrize("query", [b"alt=sse&fields=candidates", b"alt=proto", b"alt=sse&%24callback=f"])
def test_auth_check_refuses_answer_shaping_parameters_like_the_data_plane(
    hardened: Any, fake: FakeProviderThread, query: bytes
) -> None:
    """Was: /auth/check admitted (200) the registered key with Google's ``fields`` / ``alt=proto``
    / ``callback`` (the data plane forwarded them too: an answer without readable usage).  Now
    both answer the 400, nothing forwarded."""
    gateway, _, _ = hardened
    fake.clear()
    status, _, answer = post_chat(gateway, [b"x-goog-api-key: " + REGISTERED],
                                  b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?" + query,
                                  b'{"contents":[{"parts":[{"text":"hi"}]}]}')
    assert status == 400, answer
    assert provider_calls(fake) == []
    assert auth_check(gateway, [b"x-goog-api-key: " + REGISTERED], query) == 400


def test_key_spellings_the_gateway_reads_as_the_key(hardened: Any, fake: FakeProviderThread) -> None:
    """``Key=``, ``%6Bey=``, ``+key+=`` (spaces around) are the key: verified and moved to
    x-goog-api-key, whatever a provider makes of the spelling; ``key=A&key=B`` is two credentials (401);
    a name that merely contains ``key`` (``monkey``, ``key_id``) is an ordinary parameter."""
    gateway, _, _ = hardened
    gemini = b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&"
    body = b'{"contents":[{"parts":[{"text":"hi"}]}]}'
    for query in (b"Key=" + REGISTERED, b"%6Bey=" + REGISTERED, b"+key+=" + REGISTERED, b"monkey=1&key_id=2&key=" + REGISTERED):
        fake.clear()
        status, _, answer = post_chat(gateway, [], gemini + query, body)
        assert status == 200, (query, answer)
        (seen,) = provider_calls(fake)
        assert credentials_seen(seen) == [("x-goog-api-key", USER_KEY)]
        assert seen.path.endswith("?alt=sse" + ("&monkey=1&key_id=2" if b"monkey" in query else "")), seen.path
    fake.clear()
    assert post_chat(gateway, [], gemini + b"key=" + REGISTERED + b"&key=" + REGISTERED, body)[0] == 401
    assert provider_calls(fake) == []


# The property: any mix of credential headers (repeated, mixed case, listed in Connection),
# registered or not -> forwarded iff exactly one is present and registered; the forwarded
# request carries only it; /auth/check agrees.
_NAMES = st.sampled_from(["Authorization", "authorization", "AUTHORIZATION", "x-api-key", "X-API-KEY",
                          "x-goog-api-key", "api-key", "Api-Key"])  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    creds=st.lists(st.tuples(_NAMES, st.booleans()), max_size=4),
    listed=st.lists(st.sampled_from(CREDENTIAL_HEADERS), max_size=2),
)
def test_credential_combinations(
    hardened: Any, fake: FakeProviderThread, creds: list[tuple[str, bool]], listed: list[str]
) -> None:
    gateway, _, _ = hardened
    headers = []
    for name, registered in creds:
        key = USER_KEY if registered else OTHER_KEY
        value = f"Bearer {key}" if name.lower() == "authorization" else key
        headers.append(f"{name}: {value}".encode())
    if listed:
        headers.append(b"Connection: " + ", ".join(listed).encode())
    fake.clear()
    status, _, body = post_chat(gateway, headers)
    forwarded = provider_calls(fake)
    assert auth_check(gateway, headers, path=b"/v1/chat/completions") == status
    expect_ok = len(creds) == 1 and creds[0][1]
    assert (status == 200) == expect_ok, (status, body)
    assert len(forwarded) == (1 if expect_ok else 0)
    if expect_ok:
        assert [v for _, v in credentials_seen(forwarded[0])] in ([USER_KEY], ["Bearer " + USER_KEY])
    assert (auth_check(gateway, headers) == 200) == expect_ok


# -- endpoints and paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        (b"POST", b"/v1/chat/completions/", 404),
        (b"POST", b"/V1/CHAT/COMPLETIONS", 404),
        (b"POST", b"/v1/chat/completions;x", 404),
        (b"POST", b"/v1/chat%2fcompletions", 404),
        (b"POST", b"/v1/chat/completions%2f", 404),
        (b"POST", b"/v1/../admin", 404),
        (b"POST", b"/v1/%2e%2e/admin", 404),
        (b"POST", b"/../../../secret", 404),
        (b"POST", b"/v1/files", 404),
        (b"POST", b"/v1/images/generations", 404),
        (b"POST", b"/v1/chat/completions#frag", 400),
        (b"OPTIONS", b"*", 404),
        (b"POST", b"http://evil.example/v1/chat/completions", 404),
        (b"POST", b"/v1beta/models/..:generateContent", 404),
        (b"POST", b"/v1beta/models/gemini%2f..:generateContent", 404),
        (b"GET", b"/v1/chat/completions", 405),
        (b"DELETE", b"/v1/models", 405),
    ],
)
def test_only_metered_endpoints_are_forwarded(
    hardened: Any, fake: FakeProviderThread, method: bytes, target: bytes, status: int
) -> None:
    gateway, _, _ = hardened
    fake.clear()
    head = method + b" " + target + b" HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer " + REGISTERED
    got, _, body = raw_request(gateway.port, head, CHAT_BODY)
    assert got == status, body
    assert provider_calls(fake) == []
    if target.startswith(b"/"):  # Envoy's ext_authz appends the original path: same verdict
        head = method + b" /auth/check" + target + b" HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer " + REGISTERED
        assert raw_request(gateway.admin_port, head)[0] == status


def test_embeddings_are_billed_from_their_usage(hardened: Any, fake: FakeProviderThread) -> None:
    gateway, sqlite_path, project = hardened
    fake.clear()
    status, _, body = post_chat(
        gateway, [b"authorization: Bearer " + REGISTERED], b"/v1/embeddings",
        b'{"model":"text-embedding-3-small","input":"hello world"}',
    )  # fmt: skip
    assert status == 200, body
    assert json.loads(body)["usage"]["prompt_tokens"] > 0

    deadline = time.monotonic() + 15
    rows: list[Any] = []
    while not rows and time.monotonic() < deadline:
        rows = [r for r in read_rows(None, sqlite_path)
                if r.model == "text-embedding-3-small" and r.project_id == project]  # fmt: skip
        time.sleep(0.2)
    (row,) = rows
    assert row.input_tokens == json.loads(body)["usage"]["prompt_tokens"]
    assert row.status == "ok" and row.key_hash == sha(USER_KEY) and row.output_tokens == 0


# -- request bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "member"),
    [
        (b'{"model":"gpt-4o-mini","stream":true,"stream":false,"messages":[]}', "stream"),
        (b'{"model":"big-expensive","model":"gpt-4o-mini","messages":[]}', "model"),
        (b'{"model":"gpt-4o-mini","max_tokens":1,"max_tokens":100000,"messages":[]}', "max_tokens"),
    ],
)
def test_duplicate_members_are_refused(hardened: Any, fake: FakeProviderThread, body: bytes, member: str) -> None:
    gateway, _, _ = hardened
    fake.clear()
    status, _, out = post_chat(gateway, [b"authorization: Bearer " + REGISTERED], body=body)
    assert status == 400
    assert f'"{member}" appears more than once' in json.loads(out)["error"]["message"]
    assert provider_calls(fake) == []


# -- 100-continue --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status"),
    [(b"authorization: Bearer " + UNREGISTERED, 401), (b"x-api-key: a\r\nx-api-key: b", 401), (b"", 401)],
)
def test_expect_continue_only_after_the_key_checks_out(
    hardened: Any, fake: FakeProviderThread, line: bytes, status: int
) -> None:
    gateway, _, _ = hardened
    fake.clear()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n" + (line + b"\r\n" if line else b"")
            + b"content-type: application/json\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n"
            % len(CHAT_BODY)
        )  # fmt: skip
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 %d" % status), answer
        assert b"100 Continue" not in answer
    # and with a registered key the body is invited as before
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer " + REGISTERED
            + b"\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n"
            % len(CHAT_BODY)
        )  # fmt: skip
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(CHAT_BODY)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert len(provider_calls(fake)) == 1


# -- fail closed, logs, admin exposure -----------------------------------------------------


def test_auth_check_waits_for_budgets_like_the_data_plane(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    """Budgets that cannot be loaded (their table unreadable): the data plane says 503 and
    so does /auth/check (it said 200: Envoy admitted traffic with budgets unknown); once
    they load, both admit -- no restart."""
    sqlite_path = str(tmp_path / "plano_config_0.db")

    def provision() -> None:
        setup_keys(sqlite_path, fake.url)
        with sqlite3.connect(sqlite_path) as db:
            db.execute("ALTER TABLE spending_limits RENAME TO spending_limits_away")

    gateway = make_gateway(
        {"mode": "firewall", "admin_port": 0, "admin_key": "$PLANO_FAST_TEST_ADMIN",
         "budget_check_interval_s": 0.5},
        env={"PLANO_FAST_TEST_ADMIN": ADMIN_KEY},
        before_start=provision,
    )  # fmt: skip
    fake.clear()
    key = [b"authorization: Bearer " + REGISTERED]
    assert post_chat(gateway, key)[0] == 503
    assert auth_check(gateway, key) == 503
    assert provider_calls(fake) == []
    with sqlite3.connect(sqlite_path) as db:
        db.execute("ALTER TABLE spending_limits_away RENAME TO spending_limits")
    deadline = time.monotonic() + 15
    while auth_check(gateway, key) != 200:
        assert time.monotonic() < deadline, "budgets never loaded"
        time.sleep(0.2)
    assert post_chat(gateway, key)[0] == 200


def test_admin_protocol_errors_log_no_header_bytes(hardened: Any) -> None:
    gateway, _, _ = hardened
    secret = "sk-ADMINLOGSECRET-" + "A" * 9000  # past aiohttp's 8190-byte line limit
    for line in (b"x-api-key: " + secret.encode(), b"authorization: Bearer " + secret.encode()):
        assert auth_check(gateway, [line]) == 400
    time.sleep(0.3)
    log = gateway.log_path.read_text(errors="replace")
    assert "LineTooLong on a request (its bytes are not logged)" in log
    assert "ADMINLOGSECRET" not in log


def test_exposed_admin_api_needs_a_long_key(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="at least 32 characters"):
        make_gateway(
            {"mode": "firewall", "admin_port": 0, "admin_address": "0.0.0.0", "admin_key": "short-key"}
        )
    # on loopback a shorter key is the operator's choice
    assert make_gateway({"mode": "firewall", "admin_port": 0, "admin_key": "short-key"}).admin_port


def test_operator_listed_paths_pass_unbilled_and_are_counted(
    make_gateway: Callable[..., GatewayProcess], fake: FakeProviderThread, tmp_path: Path
) -> None:
    sqlite_path = str(tmp_path / "plano_config_0.db")
    projects: list[str] = []
    gateway = make_gateway(
        {"mode": "firewall", "admin_port": 0, "admin_key": "$PLANO_FAST_TEST_ADMIN",
         "firewall_unbilled_paths": '["/v1/organization/models"]'},
        env={"PLANO_FAST_TEST_ADMIN": ADMIN_KEY},
        before_start=lambda: projects.append(setup_keys(sqlite_path, fake.url)),
    )  # fmt: skip
    fake.clear()
    head = b"GET /v1/organization/models HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer " + REGISTERED
    assert raw_request(gateway.port, head)[0] == 200
    # not listed: still refused
    head = b"GET /v1/organization/users HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer " + REGISTERED
    assert raw_request(gateway.port, head)[0] == 404
    assert len(provider_calls(fake)) == 1
    deadline = time.monotonic() + 15
    rows: list[Any] = []
    while not rows and time.monotonic() < deadline:
        rows = [r for r in read_rows(None, sqlite_path) if r.project_id == projects[0]]
        time.sleep(0.2)
    (row,) = rows
    assert row.status == "unbilled" and not row.priced and row.cost_nano_usd is None
    metrics = raw_request(
        gateway.admin_port, b"GET /metrics HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer " + ADMIN_KEY.encode()
    )[2]
    assert b"plano_fast_requests_unbilled 1" in metrics


# -- the same rule in managed and config mode ----------------------------------------------


def test_managed_token_is_one_credential_on_managed_endpoints_only(
    managed: Any, fake: FakeProviderThread
) -> None:
    gateway, _, tenant = managed
    token = tenant.token.encode()
    fake.clear()
    # a token plus another credential: refused (was: the token authenticated, the rest dropped)
    assert post_chat(gateway, [b"authorization: Bearer " + token, b"x-api-key: sk-provider-own"])[0] == 401
    # a token off the managed endpoints: 404, never routed on (a passthrough provider saw it)
    head = (b"POST /v1beta/models/gpt-4o-mini:generateContent HTTP/1.1\r\nhost: gw\r\n"
            b"x-goog-api-key: " + token)  # fmt: skip
    assert raw_request(gateway.port, head, b'{"contents":[]}')[0] == 404
    assert provider_calls(fake) == []
    status, _, body = post_chat(gateway, [b"authorization: Bearer " + token])
    assert status == 200, body
    (seen,) = provider_calls(fake)
    assert tenant.token not in json.dumps(seen.headers)


def test_config_passthrough_forwards_the_one_credential(gateway: GatewayProcess, fake: FakeProviderThread) -> None:
    body = b'{"model":"vllm/llama-passthrough","messages":[{"role":"user","content":"x"}]}'
    fake.clear()
    two = [b"authorization: Bearer sk-client-a", b"api-key: sk-client-b"]
    assert post_chat(gateway, two, body=body)[0] == 401
    assert provider_calls(fake) == []
    # Connection cannot strip the credential the provider is meant to get, nor keep another
    status, _, out = post_chat(gateway, [b"authorization: Bearer sk-client-a", b"connection: authorization"], body=body)
    assert status == 200, out
    (seen,) = provider_calls(fake)
    assert credentials_seen(seen) == [("authorization", "Bearer sk-client-a")]
    # a gateway-authenticated provider gets the gateway's key only
    fake.clear()
    assert post_chat(gateway, [b"x-goog-api-key: sk-client-a"])[0] == 200
    (seen,) = provider_calls(fake)
    assert credentials_seen(seen) == [("authorization", "Bearer sk-server-openai-key")]


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"gpt-4o-mini","input":"hi","background":true}',
        b'{"model":"gpt-4o-mini","input":"hi","b\\u0061ckground":true}',
        b'{"model":"gpt-4o-mini","input":"hi","background":true,"background":false}',
    ],
)
def test_background_responses_cannot_be_metered_and_are_refused(
    hardened: Any, fake: FakeProviderThread, body: bytes
) -> None:
    gateway, _, _ = hardened
    fake.clear()
    status, _, out = post_chat(gateway, [b"authorization: Bearer " + REGISTERED], b"/v1/responses", body)
    assert status == 400 and "background" in json.loads(out)["error"]["message"]
    assert provider_calls(fake) == []
    # the word in a message is no reason to refuse
    status, _, out = post_chat(
        gateway, [b"authorization: Bearer " + REGISTERED], b"/v1/responses",
        b'{"model":"gpt-4o-mini","input":"\\"background\\": true","background":false}',
    )  # fmt: skip
    assert status == 200, out


@pytest.mark.parametrize(
    ("model", "status"),
    [(b"..%2F..%2Fadmin", 400), (b"gpt-4o-mini%2F..", 400), (b"%2E%2E", 400), (b"openai%2Fgpt-4o-mini", 200)],
)
def test_config_mode_gemini_path_models_are_plain(
    gateway: GatewayProcess, fake: FakeProviderThread, model: bytes, status: int
) -> None:
    fake.clear()
    head = b"POST /v1beta/models/" + model + b":generateContent HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json"
    got, _, body = raw_request(gateway.port, head, b'{"contents":[{"parts":[{"text":"hi"}]}]}')
    assert got == status, body
    assert len(provider_calls(fake)) == (1 if status == 200 else 0)


def test_key_hash_memo_holds_no_key_and_is_bounded() -> None:
    import hashlib

    from plano_fast.gateway import phases as exchange

    keys = [b"sk-memo-%d-" % i + b"x" * 30_000 for i in range(5000)]
    for key in keys + keys[:10]:
        assert exchange.key_hash(key) == hashlib.sha256(key).hexdigest()
    assert len(exchange._KEY_HASHES) <= exchange._KEY_HASHES_MAX
    for check, digest in exchange._KEY_HASHES.values():
        assert isinstance(check, int) and len(digest) == 64  # fixed size: no key inside


def test_auth_check_refuses_alt_sse_on_a_unary_gemini_call(hardened: Any) -> None:
    """As the data plane does (tests/test_edges.py): ``:generateContent?alt=sse`` is a 400,
    the stream's ``:streamGenerateContent?alt=sse`` is admitted."""
    gateway, _, _ = hardened
    key = [b"x-goog-api-key: " + REGISTERED]
    assert auth_check(gateway, key, path=b"/v1beta/models/gemini-2.5-flash:generateContent?alt=sse") == 400
    assert auth_check(gateway, key, path=b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse") == 200
    assert auth_check(gateway, key, path=b"/v1beta/models/gemini-2.5-flash:generateContent?alt=json") == 200


#: Azure's subscription-key header in the spellings a server reads as it (any case, "_" for "-")
SUBSCRIPTION_KEY_HEADERS = [b"Ocp-Apim-Subscription-Key: ", b"ocp-apim-subscription-key: ",
                            b"ocp_apim_subscription_key: ", b"OCP_APIM_SUBSCRIPTION_KEY: "]


@pytest.mark.parametrize("header", SUBSCRIPTION_KEY_HEADERS)
@pytest.mark.parametrize("chunked", [False, True])
def test_an_azure_subscription_key_header_is_refused_beside_the_verified_key(
    hardened: Any, fake: FakeProviderThread, header: bytes, chunked: bool
) -> None:
    """Was: forwarded beside the one verified credential -- a second key nobody checked,
    which Azure AI services authenticate as they do ``api-key`` and an API Management
    front reads its subscription from: a registered key could carry an unregistered
    (revoked, another tenant's) one, served and charged upstream while the gateway meters
    the registered one.  Now a 401 like its query form, alone or beside a key, on both
    request parsers (``chunked``: httptools'); /auth/check agrees; nothing forwarded.  An
    ordinary header that merely contains the name passes."""
    gateway, _, _ = hardened
    azure = b"/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    for credentials in ([b"api-key: " + REGISTERED], [b"Authorization: Bearer " + REGISTERED], []):
        headers = [*credentials, header + UNREGISTERED]
        fake.clear()
        if chunked:
            head = b"POST " + azure + b" HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            head += b"".join(line + b"\r\n" for line in headers) + b"transfer-encoding: chunked\r\nconnection: close"
            status, _, answer = raw_request(
                gateway.port, head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT_BODY), CHAT_BODY), read_all=False)
        else:
            status, _, answer = post_chat(gateway, headers, azure)
        assert status == 401, (headers, answer)
        assert json.loads(answer)["error"]["code"] in ("invalid_api_key", "missing_api_key"), answer
        assert OTHER_KEY not in answer.decode()
        assert provider_calls(fake) == [], headers
        assert auth_check(gateway, headers) == 401
    fake.clear()
    status, _, answer = post_chat(gateway, [b"api-key: " + REGISTERED, b"x-note: " + header + b"v"], azure)
    assert status == 200, answer
    assert auth_check(gateway, [b"api-key: " + REGISTERED, b"x-note: " + header + b"v"]) == 200


@pytest.mark.parametrize("line", [b"authorization: Bearer ", b"Authorization: bearer  ", b"x-api-key: ",
                                  b"x_api_key: ", b"api-key: ", b"x-goog-api-key: "])
def test_trailing_whitespace_after_a_value_decides_nothing_differently(
    hardened: Any, fake: FakeProviderThread, line: bytes
) -> None:
    """httptools hands a header value with its trailing spaces and tabs (the request fast
    path declines such a head): the credential it identifies and writes back, the framing
    its Content-Length gives and the usage row are the same as for the value without them
    -- the optional whitespace is HTTP's, not the value's (RFC 9110 5.5).  (x-request-id
    with trailing whitespace is not kept as the client's id on that path: the gateway's
    own id goes up instead, tests/test_edges.py.)"""
    gateway, sqlite_path, project = hardened
    key = (ANT_KEY if b"x-api-key" in line.lower() or b"x_api_key" in line.lower() else USER_KEY).encode()
    seen = []
    for tail, length_tail in ((b"", b""), (b" \t ", b" "), (b"\t", b"\t")):
        fake.clear()
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                + line + key + tail + b"\r\nconnection: close\r\ncontent-length: %d" % len(CHAT_BODY) + length_tail)
        status, answer_head, answer = raw_request(gateway.port, head, CHAT_BODY, read_all=False)
        assert status == 200, (tail, answer)
        (call,) = provider_calls(fake)
        assert call.body == CHAT_BODY
        seen.append(credentials_seen(call))
    assert seen[0] == seen[1] == seen[2] and len(seen[0]) == 1, seen
    assert seen[0][0][1].endswith(key.decode()) and seen[0][0][1].split()[-1] == key.decode()

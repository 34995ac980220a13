"""Upstream TLS is verified against the system CA store, and DNS answers are cached."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plano_fast.upstream import DnsCache
from tests.gateway_proc import GatewayProcess


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return cert_path, key_path


@pytest.fixture
def untrusted_tls_server(tmp_path: Path) -> Iterator[int]:
    """An HTTPS server whose certificate no system CA signed."""
    cert, key = _self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    handshakes: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.append("connected")
        writer.close()

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    # A refused handshake closes its transport in a callback that may still be queued
    # behind the stop: run it, or the socket is reported unclosed when collected.
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()


def test_untrusted_certificate_is_refused(
    make_gateway: Callable[..., GatewayProcess], untrusted_tls_server: int
) -> None:
    extra = (f"  - name: tls\n    model: tls/m\n    base_url: https://127.0.0.1:{untrusted_tls_server}\n"
             "    provider_interface: openai\n    access_key: sk-secret-tls\n")
    gateway = make_gateway(extra_providers=extra)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="tls", messages=[])
    assert err.value.status_code == 502
    assert "TLS" in str(err.value) or "certificate" in str(err.value).lower()
    assert "sk-secret-tls" not in gateway.log_text()


def test_dns_answers_are_cached_for_the_ttl() -> None:
    async def go() -> None:
        cache = DnsCache(ttl_s=60)
        first = await cache.resolve("localhost", 80)
        assert first and all(addr in ("127.0.0.1", "::1") for _, addr in first)
        # A cached answer is returned as the same object, without a new lookup.
        assert await cache.resolve("localhost", 80) is first
        expired = DnsCache(ttl_s=0)
        one = await expired.resolve("localhost", 80)
        assert await expired.resolve("localhost", 80) is not one
        assert await cache.resolve("10.1.2.3", 443) == [(2, "10.1.2.3")]  # literals bypass

    asyncio.run(go())

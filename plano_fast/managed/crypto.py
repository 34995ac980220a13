"""Provider keys encrypted at rest with AES-256-GCM (the ``cryptography`` package).

The master key comes from the environment (``PLANO_FAST_MASTER_KEY``: 32 bytes, base64 or
hex) and never from the config file or the database.  Each ciphertext records the id of
the key that sealed it (the first 16 hex digits of the key's SHA-256), so the master key
can be rotated: add the new one, re-encrypt, retire the old.  The provider id is bound as
associated data, so a ciphertext cannot be moved to another provider's row unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_ENV = "PLANO_FAST_MASTER_KEY"
NONCE_BYTES = 12  # the GCM standard nonce; random per encryption


class MasterKeyError(ValueError):
    pass


def parse_master_key(text: str) -> bytes:
    text = text.strip()
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True),
                   base64.urlsafe_b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise MasterKeyError(f"{MASTER_KEY_ENV} must be 32 bytes, hex or base64 encoded")


def generate_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


class KeyCipher:
    """Seal and open provider keys; holds the master key only in this process."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise MasterKeyError("the master key must be 32 bytes")
        # Imported on first use (~45 ms of a start's CPU): only managed mode and the
        # admin API's key commands seal or open keys; MasterKeyError stays light for the CLI.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead: AESGCM = AESGCM(master_key)
        self.key_id = hashlib.sha256(master_key).hexdigest()[:16]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeyCipher:
        value = (env if env is not None else os.environ).get(MASTER_KEY_ENV)
        if not value:
            raise MasterKeyError(
                f"managed mode needs a master key: set {MASTER_KEY_ENV} "
                "(generate one with `plano-fast managed new-master-key`)"
            )
        return cls(parse_master_key(value))

    def encrypt(self, plaintext: str, provider: str) -> tuple[bytes, bytes, str]:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, plaintext.encode(), provider.encode())
        return ciphertext, nonce, self.key_id

    def decrypt(self, ciphertext: bytes, nonce: bytes, key_id: str, provider: str) -> str:
        if key_id != self.key_id:
            raise MasterKeyError(f"provider key was sealed with master key {key_id}, not this one")
        return self._aead.decrypt(nonce, ciphertext, provider.encode()).decode()

"""The text dialect's echo at rest: sealed (AES-GCM) before DynamoDB stores it.

Under token auth the seed's first line shows the user their own credential, so a text-dialect
connection's record must keep it between `$connect` and each `$default`. Whoever reads the
table (a backup, an export, a colleague's console) must not be able to impersonate the user:
the record holds it only sealed under `WSCHAT_ECHO_KEY`, bound to its connection's id.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets

log = logging.getLogger(__name__)

_PREFIX = "v1."
_NONCE_BYTES = 12


class EchoSeal:
    """Seals and opens echoes under one key. Every Lambda container must share it (serverless.yml
    generates one); without a configured key, one is made for this process, which is enough
    where one process runs every handler (`wschat emulate`)."""

    def __init__(self, key: str = "") -> None:
        secret = key.encode() if key else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"wschat-echo:" + secret).digest()
        self._warned = False

    def seal(self, echo: str, connection_id: str) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # text dialect only

        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(self._key).encrypt(nonce, echo.encode(), connection_id.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, connection_id: str) -> str | None:
        """The echo, or None when it cannot be opened: sealed under another key (a container
        without WSCHAT_ECHO_KEY), for another connection, or written before echoes were sealed."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            if not sealed.startswith(_PREFIX):
                raise ValueError("not sealed")
            raw = base64.urlsafe_b64decode(sealed[len(_PREFIX) :])
            nonce, body = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
            return AESGCM(self._key).decrypt(nonce, body, connection_id.encode()).decode()
        except (ValueError, InvalidTag):
            if not self._warned:
                self._warned = True
                log.warning("a text-dialect echo could not be opened; is WSCHAT_ECHO_KEY set?")
            return None

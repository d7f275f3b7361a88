"""Bearer-token authentication: ``Authorization: Bearer <key>``, compared in constant time.

Both sides are hashed before ``hmac.compare_digest`` so that neither the key's bytes nor its
length can be learnt from response times.
"""

from __future__ import annotations

import hashlib
import hmac

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edgeclin"'}


class AuthError(Exception):
    """A request without the right key (401)."""


class BearerAuth:
    def __init__(self, key: bytes | None) -> None:
        self.enabled = key is not None
        self._digest = hashlib.sha256(key).digest() if key is not None else b""

    def check(self, authorization: str | None) -> None:
        """Raise ``AuthError`` unless the header carries the key (nothing to check without a key)."""
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("missing bearer token: send Authorization: Bearer <key>")
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given, self._digest):
            raise AuthError("invalid bearer token")

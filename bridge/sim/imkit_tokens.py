"""The client tokens of the simulated IMKIT: HS256 JWTs ``{id, iat, exp}``, issued and checked."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

import jwt


@contextlib.contextmanager
def _short_key_ok() -> Iterator[None]:
    # The simulator's default secret is short on purpose (a well-known test value); PyJWT warns.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HMAC key.*")
        yield


def issue_token(secret: str, client_id: str, ttl: float) -> str:
    """A token for ``client_id`` valid ``ttl`` seconds from now (a negative ``ttl``: expired)."""
    now = time.time()
    claims = {"id": client_id, "iat": int(now), "exp": int(now + ttl)}
    with _short_key_ok():
        return jwt.encode(claims, secret, "HS256")


def token_client(secret: str, token: object) -> str | None:
    """The client id of a well-signed, unexpired token; else None."""
    if not isinstance(token, str) or not token:
        return None
    try:
        with _short_key_ok():
            claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.PyJWTError:
        return None
    cid = claims.get("id")
    return cid if isinstance(cid, str) else None

"""Tokens: a fixed string, or a function called again before ``exp`` and whenever the
server says the token expired (docs/PROTOCOL.md §12)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import time
from typing import Any, Awaitable, Callable, TypeAlias

from .errors import TickstreamError

__all__ = ["TokenFunction", "TokenSource", "bearer", "jwt_claims", "refresh_delay"]

TokenFunction: TypeAlias = Callable[[], Awaitable[str] | str]


def jwt_claims(token: str | None) -> dict[str, Any] | None:
    """The claims of a JWT, unverified (only ``exp`` and ``iat`` are read), or None."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        return None
    try:
        body = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(body))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def refresh_delay(token: str | None, now: float | None = None) -> float | None:
    """Seconds until the next token should be asked for: before ``exp`` by a fifth of
    the token's lifetime (1–60 s), never sooner than in 1 s; None without ``exp``."""
    claims = jwt_claims(token)
    exp = _number(claims.get("exp")) if claims else None
    if claims is None or exp is None:
        return None
    now = time.time() if now is None else now
    iat = _number(claims.get("iat"))
    lifetime = exp - (iat if iat is not None else now)
    margin = min(60.0, max(1.0, lifetime / 5))
    return max(1.0, exp - margin - now)


def token_error(e: BaseException) -> TickstreamError:
    """What a failing token function is reported as (its own TickstreamError as is)."""
    if isinstance(e, TickstreamError):
        return e
    return TickstreamError("token_error", f"the token function failed: {e!r}")


def bearer(token: str | None) -> dict[str, str]:
    """The request header that carries a token (none for no token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def expiry(token: str | None) -> float | None:
    claims = jwt_claims(token)
    return _number(claims.get("exp")) if claims else None


class TokenSource:
    """The token in force. With a function, concurrent callers asking for a fresh one
    share one call."""

    def __init__(self, token: str | TokenFunction | None) -> None:
        if callable(token):
            self._fn: TokenFunction | None = token
            self._value: str | None = None
        elif token is None or isinstance(token, str):
            self._fn = None
            self._value = token or ""
        else:
            raise TypeError("token must be a string or a function returning one")
        self._pending: asyncio.Future[str] | None = None

    @property
    def refreshable(self) -> bool:
        return self._fn is not None

    @property
    def current(self) -> str | None:
        return self._value

    async def get(self, fresh: bool = False) -> str:
        """The token in force; ``fresh`` asks the function for a new one."""
        if self._fn is None:
            return self._value or ""
        if not fresh and self._value is not None:
            return self._value
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.ensure_future(self._call(self._fn))
            # Read by whoever awaits it; a caller cancelled meanwhile must not leave
            # an exception nobody retrieves.
            pending.add_done_callback(_retrieve)
        # Shielded: one caller giving up does not cancel the call the others wait for.
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if pending.cancelled() and not (me is not None and me.cancelling()):
                # The client closed under a caller that was not cancelled itself.
                raise TickstreamError("closed", "this client is closed") from None
            raise

    def cancel(self) -> None:
        """Stops a call in flight (the client is closing): nothing outlives it."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    async def _call(self, fn: TokenFunction) -> str:
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
            if not isinstance(value, str) or not value:
                raise TickstreamError("bad_token", "the token function returned no token")
            self._value = value
            return value
        finally:
            if self._pending is asyncio.current_task():  # not a newer call's
                self._pending = None


def _retrieve(future: asyncio.Future[str]) -> None:
    if not future.cancelled():
        future.exception()

"""REST reads (docs/PROTOCOL.md §6): one at a time, paced by ``X-RateLimit-Remaining``,
a 429 waited out (its ``Retry-After``) and asked again, pages followed by ``next``."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Generic, Mapping, TypeVar
from urllib.parse import quote

import httpx

from .dataframe import candles_to_dataframe, ticks_to_dataframe
from .errors import TickstreamError
from .events import Candle, Tick
from .tokens import TokenSource, bearer, token_error

if TYPE_CHECKING:
    import pandas

__all__ = ["Pages", "Rest"]

T = TypeVar("T", Tick, Candle)

# A 429 is waited out and asked again this many times before it is the caller's.
RETRIES_429 = 5
# The most a page holds (docs/PROTOCOL.md §6).
PAGE_MAX = 1000


def path_of(channel: str, what: str) -> str:
    return f"/api/v1/channels/{quote(channel, safe='')}/{what}"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """A ``Retry-After`` in seconds, or None."""
    try:
        value = float(headers.get("Retry-After") or "")
    except ValueError:
        return None
    return value if value > 0 else None


def error_from(status: int, headers: Mapping[str, str], body: bytes) -> TickstreamError:
    """The error of a refused request or handshake: the server's ``{"error", "message"}``."""
    code, message = f"http_{status}", ""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        if isinstance(payload.get("error"), str):
            code = payload["error"]
        if isinstance(payload.get("message"), str):
            message = payload["message"]
    return TickstreamError(
        code,
        f"HTTP {status}" + (f": {message}" if message else ""),
        status=status,
        retry_after=retry_after(headers),
    )


class Rest:
    """One REST read at a time for the client: when ``X-RateLimit-Remaining`` reaches 0
    the next waits a second (about one refill), a 429 waits its ``Retry-After`` (five
    times), and a 401 with a token function is tried once more with a fresh token."""

    def __init__(self, base_url: Callable[[], str], tokens: TokenSource, http: httpx.AsyncClient) -> None:
        self._base_url = base_url
        self._tokens = tokens
        self.http = http
        self._lock = asyncio.Lock()
        self._not_before = 0.0

    async def _token(self, fresh: bool = False) -> str:
        try:
            return await self._tokens.get(fresh)
        except TickstreamError:
            raise
        except Exception as e:
            raise token_error(e) from e

    async def request(self, path: str, params: Mapping[str, Any] | None = None, *, allow_404: bool = False) -> Any:
        """The JSON answer of ``GET path?params``; None for a 404 when ``allow_404``."""
        query = {k: str(v) for k, v in (params or {}).items() if v is not None and v != ""}
        async with self._lock:
            refreshed = False
            tries = 0
            while True:
                wait = self._not_before - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.http.is_closed:  # checked after every wait: close() may have come
                    raise TickstreamError("closed", "this client is closed")
                token = await self._token()
                try:
                    response = await self.http.get(self._base_url() + path, params=query, headers=bearer(token))
                except (httpx.HTTPError, RuntimeError) as e:
                    if self.http.is_closed:  # closed under this request
                        raise TickstreamError("closed", "this client is closed") from e
                    if isinstance(e, RuntimeError):
                        raise
                    raise TickstreamError("unreachable", f"cannot reach the server: {e!r}") from e
                left = response.headers.get("X-RateLimit-Remaining")
                if left is not None and left.isdigit() and int(left) < 1:
                    self._not_before = time.monotonic() + 1.0
                if response.status_code == 429 and tries < RETRIES_429:
                    tries += 1
                    self._not_before = time.monotonic() + (retry_after(response.headers) or 1.0)
                    continue
                if response.status_code == 401 and self._tokens.refreshable and not refreshed:
                    refreshed = True
                    await self._token(fresh=True)
                    continue
                if response.status_code == 404 and allow_404:
                    return None
                if not response.is_success:
                    raise error_from(response.status_code, response.headers, response.content)
                try:
                    return response.json()
                except ValueError as e:
                    raise TickstreamError("bad_response", f"not JSON: {response.text[:200]!r}") from e


class Pages(Generic[T], AsyncIterator[T]):
    """The items of every page of a history or candles read, ``limit`` at most; an
    async iterator, and ``await pages.to_list()`` / ``await pages.to_dataframe()``."""

    def __init__(
        self,
        rest: Rest,
        path: str,
        params: Mapping[str, Any],
        field: str,
        parse: Callable[[Mapping[str, Any], str], T],
        channel: str,
        limit: int | None,
    ) -> None:
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ValueError("limit must be a whole number ≥ 0")
        self._rest, self._path, self._params = rest, path, dict(params)
        self._field, self._channel, self._limit = field, channel, limit
        self._parse: Callable[[Mapping[str, Any], str], T] = parse
        self._items: AsyncIterator[T] = self._walk()

    async def _walk(self) -> AsyncIterator[T]:
        left = PAGE_MAX * 10**12 if self._limit is None else self._limit
        cursor: str | None = None
        while left > 0:
            page = await self._rest.request(self._path, {**self._params, "limit": min(PAGE_MAX, left), "cursor": cursor})
            items = page.get(self._field) if isinstance(page, dict) else None
            items = items if isinstance(items, list) else []
            for item in items[:left]:
                if isinstance(item, dict):
                    yield self._parse(item, self._channel)
            left -= len(items)
            cursor = page.get("next") if isinstance(page, dict) else None
            if not cursor:
                return

    def __aiter__(self) -> Pages[T]:
        return self

    async def __anext__(self) -> T:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        await self._items.aclose()  # type: ignore[attr-defined]

    async def to_list(self) -> list[T]:
        """Every item, pages followed."""
        return [item async for item in self]

    async def to_dataframe(self) -> pandas.DataFrame:
        """Every item as a pandas DataFrame with a UTC ``DatetimeIndex`` (needs pandas,
        the ``pandas`` extra)."""
        items = await self.to_list()
        if self._field == "candles":
            return candles_to_dataframe(items)  # type: ignore[arg-type]
        return ticks_to_dataframe(items)  # type: ignore[arg-type]

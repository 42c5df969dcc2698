"""The client: one multiplexed socket (or SSE streams, when asked), every subscription
resumed from its cursor after any drop, REST reads paced (docs/PROTOCOL.md §12)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, Callable, Literal, Self, Sequence, TypeAlias

import httpx

from .errors import TickstreamError
from .events import (
    CHANNEL_RE, INTERVALS, SPECIAL_SINCE_RE, Candle, Cursor, Interval, Tick, checked_epoch, checked_seq, is_id,
)
from .link import Backoff, Link, StateInfo
from .rest import Pages, Rest, path_of
from .sse import SseLink
from .subscription import Subscription
from .tokens import TokenFunction, TokenSource
from .version import USER_AGENT
from .ws import WsLink

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Client", "ClientState"]

logger = logging.getLogger("tickstream")

ClientState: TypeAlias = Literal["idle", "connecting", "connected", "reconnecting", "closed"]
# A REST answer that takes longer is given up (a page of 1,000 ticks takes milliseconds).
REST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Events a subscription holds for its loop before it pauses (about 5 MB of ticks).
MAX_BUFFER = 10_000


class Client:
    """A tickstream client. Use it as ``async with Client(url, token=...) as client``.

    ``url``: the server (``http(s)://`` or ``ws(s)://``), or a list of nodes: each
    reconnect takes the next. ``token``: a string, or a function (sync or async)
    returning one, called again before the token's ``exp`` and when the server says it
    expired. ``transport``: ``"websocket"`` (one socket for every subscription) or
    ``"sse"`` (one stream per subscription), never switched by itself. ``on_state`` is
    called with every state change and its ``StateInfo``; ``on_error`` with errors that
    belong to no call (a failed token function, a refused refresh) — without it they
    are logged on the ``tickstream`` logger. Both are plain functions, called in the
    event loop. ``max_buffer``: the events a subscription holds for its loop before it
    pauses (see ``Subscription``).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | TokenFunction | None = None,
        transport: Literal["websocket", "sse"] = "websocket",
        backoff: Backoff | None = None,
        on_state: Callable[[ClientState, StateInfo], None] | None = None,
        on_error: Callable[[TickstreamError], None] | None = None,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self._urls = [re.sub(r"^ws(s?)://", r"http\1://", str(u).rstrip("/")) for u in urls if u]
        if not self._urls or not all(re.match(r"https?://", u) for u in self._urls):
            raise ValueError("url must be an http(s) or ws(s) URL, or a list of them")
        if transport not in ("websocket", "sse"):
            raise ValueError('transport must be "websocket" or "sse"')
        if not isinstance(max_buffer, int) or max_buffer < 2:
            raise ValueError("max_buffer must be a whole number ≥ 2")
        self.max_buffer = max_buffer
        self._url_index = 0
        self._transport = transport
        #: The token in force (``tokens.current``) and how to get the next.
        self.tokens = TokenSource(token)
        self.backoff = backoff or Backoff()
        self._on_state = on_state
        self._on_error = on_error
        #: ``idle`` · ``connecting`` · ``connected`` · ``reconnecting`` · ``closed``.
        self.state: ClientState = "idle"
        #: Why the client stopped by itself, if it did.
        self.error: TickstreamError | None = None
        #: The open subscriptions, by channel.
        self.subscriptions: dict[str, Subscription] = {}
        #: The HTTP client for REST (closed with the client).
        self.http = httpx.AsyncClient(
            timeout=REST_TIMEOUT, headers={"User-Agent": USER_AGENT}, trust_env=False
        )
        # SSE streams get a pool of their own, without a cap: each holds a connection
        # for as long as it runs, and REST must never wait behind them.
        self._sse_http: httpx.AsyncClient | None = None
        self._rest = Rest(lambda: self.url, self.tokens, self.http)
        self._ws: WsLink | None = None
        self._sse: dict[Subscription, SseLink] = {}
        # Link tasks stopped while the client runs (an SSE subscription closed): awaited
        # by close(), so nothing outlives the client.
        self._retired: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Future[None] | None = None
        # Set while connected, and once closed (for good): what connect() waits for.
        self._settled = asyncio.Event()

    # ---- state ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The node in use (``http(s)://``)."""
        return self._urls[self._url_index]

    @property
    def ws_url(self) -> str:
        return re.sub(r"^http", "ws", self.url)

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def sse_http(self) -> httpx.AsyncClient:
        """The HTTP client of SSE streams (made at the first)."""
        if self._sse_http is None:
            self._sse_http = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT},
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
                trust_env=False,
            )
        return self._sse_http

    def _retire(self, task: asyncio.Task[None] | None) -> None:
        """Stops a link's task (one ending itself is left to end); close() awaits it."""
        if task is not None and not task.done():
            if task is not asyncio.current_task():
                task.cancel()
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    def _set_state(self, state: ClientState, info: StateInfo) -> None:
        if self.state == "closed":
            return  # closed is for good
        if state == "reconnecting" and len(self._urls) > 1:
            self._url_index = (self._url_index + 1) % len(self._urls)
        self.state = state
        if state in ("connected", "closed"):
            self._settled.set()
        else:
            self._settled.clear()
        if self._on_state is not None:
            try:
                self._on_state(state, info)
            except Exception:  # the callback's own bug stays its own
                logger.exception("tickstream: on_state raised")

    def _report(self, error: TickstreamError) -> None:
        """An error that belongs to no call or subscription."""
        if self._on_error is None:
            logger.warning("tickstream: %s: %s", error.code, error.message)
            return
        try:
            self._on_error(error)
        except Exception:
            logger.exception("tickstream: on_error raised")

    def _stop(self, error: TickstreamError | None) -> None:
        """Closed for good: every subscription ends (with ``error``), every link task
        is stopped. The subscriptions are forgotten before anyone hears of it, so an
        ``on_state`` callback closing one sends nothing."""
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        self._set_state("closed", StateInfo(url=self.url, error=error))
        for sub in subs:
            sub._end(error)
        for link in self._links():
            self._retire(link.task)

    def _fail(self, error: TickstreamError) -> None:
        """Stops for good by itself: every subscription ends with ``error``."""
        if self.state == "closed":
            return
        self.error = error
        self._stop(error)

    def _closed_error(self) -> TickstreamError:
        return self.error or TickstreamError("closed", "this client is closed")

    def _links(self) -> list[Link]:
        return [*([self._ws] if self._ws else []), *self._sse.values()]

    # ---- subscriptions ----------------------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        *,
        since: str | None = None,
        seq: int | None = None,
        epoch: str | None = None,
        rate: int | None = None,
        candles: Interval | None = None,
        cursor: Cursor | None = None,
    ) -> Subscription:
        """Subscribes to ``channel``: from ``cursor`` (a saved ``sub.cursor``) when
        given, else from ``since`` — an id (with its ``seq`` and ``epoch`` for exact
        gaps), ``"$"`` (live only), ``"0-0"`` (everything kept), ``"t:<RFC 3339>"`` —
        else the server's recent replay. ``rate``: at most that many ticks a second,
        each the newest (1–1000). ``candles``: also live candles of that interval."""
        if not isinstance(channel, str) or not CHANNEL_RE.fullmatch(channel):
            raise TickstreamError("bad_channel", f"not a channel name: {channel!r}")
        if self.closed:
            raise self._closed_error()
        if channel in self.subscriptions:
            raise TickstreamError("already_subscribed", f"already subscribed to {channel}", channel=channel)
        if since is not None and not (is_id(since) or SPECIAL_SINCE_RE.fullmatch(since)):
            raise TickstreamError("bad_since", f"since: {since!r}")
        if rate is not None and not (isinstance(rate, int) and not isinstance(rate, bool) and 1 <= rate <= 1000):
            raise TickstreamError("bad_rate", "rate: a whole number from 1 to 1000")
        try:
            seq = checked_seq(seq)
        except ValueError as e:
            raise TickstreamError("bad_seq", str(e)) from None
        try:
            epoch = checked_epoch(epoch)
        except ValueError as e:
            raise TickstreamError("bad_epoch", str(e)) from None
        if candles is not None and candles not in INTERVALS:
            raise TickstreamError("bad_interval", f"candles: one of {', '.join(INTERVALS)}")
        # An id in `since` is a cursor like any other: repeats at or before it are
        # dropped and continuity is checked from its `seq`.
        if cursor is None and since is not None and is_id(since):
            cursor = Cursor(since, seq, epoch)
        options = {"since": since, "seq": seq, "epoch": epoch, "rate": rate, "candles": candles}
        sub = Subscription(self, channel, options, cursor, self.max_buffer)
        self.subscriptions[channel] = sub
        link: WsLink | SseLink
        if self._transport == "websocket":
            link = self._ws = self._ws or WsLink(self)
        else:
            link = self._sse[sub] = SseLink(self, sub)
        link.add(sub)
        return sub

    def _unsubscribed(self, sub: Subscription) -> None:
        """Called by ``sub.close()``."""
        if self.subscriptions.get(sub.channel) is not sub:
            return
        if self._ws is not None and not sub.paused:  # a paused one was unsubscribed already
            self._ws.remove(sub)
        self._dropped(sub)

    def _dropped(self, sub: Subscription) -> None:
        """Forgets a subscription that ended."""
        if self.subscriptions.get(sub.channel) is sub:
            del self.subscriptions[sub.channel]
        link = self._sse.pop(sub, None)
        if link is not None:
            self._retire(link.task)

    def _refuse(self, sub: Subscription, error: TickstreamError) -> None:
        """The server refused this subscription for good: it ends alone, with ``error``."""
        self._dropped(sub)
        sub._end(error)

    def _pause(self, sub: Subscription) -> None:
        """The subscription's buffer is full: the server stops sending for it (an SSE
        link sees ``sub.paused`` and ends its stream by itself)."""
        if self._ws is not None:
            self._ws.remove(sub)

    def _resume(self, sub: Subscription) -> None:
        """The loop caught up: the subscription continues from its last tick received."""
        if self.subscriptions.get(sub.channel) is not sub:
            return
        if self._ws is not None:
            self._ws.add(sub)
        link = self._sse.get(sub)
        if link is not None:
            link.resume()

    # ---- the connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Opens the socket now rather than at the first subscribe, and returns once it
        is open (raises the error the client stopped with, if it did)."""
        if self._transport != "websocket":
            return
        if self.closed:
            raise self._closed_error()
        self._ws = self._ws or WsLink(self)
        self._ws.start()
        await self._settled.wait()
        if self.closed:
            raise self._closed_error()

    def reconnect(self) -> None:
        """Ends a backoff wait and connects now (nothing while connected)."""
        for link in self._links():
            link.skip_wait()

    async def close(self) -> None:
        """Closes the socket, ends every subscription (their cursors stay) and returns
        once every task of the client has ended."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        # Shielded: a caller cancelled meanwhile does not cut the teardown short.
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._stop(None)  # (the subscriptions are gone already if the client failed)
        self.tokens.cancel()
        self._sse.clear()
        try:
            await asyncio.gather(*self._retired, return_exceptions=True)
        finally:
            await self.http.aclose()
            if self._sse_http is not None:
                await self._sse_http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- REST -------------------------------------------------------------------------------------

    def history(
        self,
        channel: str,
        *,
        since: str | None = None,
        until: str | None = None,
        order: Literal["asc", "desc"] = "asc",
        limit: int | None = None,
    ) -> Pages[Tick]:
        """Every stored tick of ``channel`` with an id in (``since``, ``until``] (ids, or
        moments ``t:<RFC 3339>``), in ``order``, ``limit`` at most; pages followed."""
        return Pages(self._rest, path_of(channel, "ticks"), {"since": since, "until": until, "order": order},
                     "ticks", Tick.parse, channel, limit)

    def candles(
        self,
        channel: str,
        *,
        interval: Interval = "1m",
        since: str | None = None,
        until: str | None = None,
        order: Literal["asc", "desc"] = "asc",
        limit: int | None = None,
    ) -> Pages[Candle]:
        """Candles of ``interval`` whose start is in (``since``, ``until``] (RFC 3339 or
        Unix ms), in ``order``, ``limit`` at most; pages followed."""
        params = {"interval": interval, "since": since, "until": until, "order": order}
        return Pages(self._rest, path_of(channel, "candles"), params, "candles",
                     lambda f, ch: Candle.parse(f, ch, interval), channel, limit)

    async def latest(self, channel: str) -> Tick | None:
        """The channel's newest tick, or None when it has none."""
        f = await self._rest.request(path_of(channel, "latest"), allow_404=True)
        return Tick.parse(f, channel) if isinstance(f, dict) else None

    async def channels(self, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """A page of the channels this token may read: ``{"channels": [...], "next"}``."""
        page = await self._rest.request("/api/v1/channels", {"limit": limit, "cursor": cursor})
        return page if isinstance(page, dict) else {"channels": [], "next": None}

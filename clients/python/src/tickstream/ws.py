"""One multiplexed ``/ws`` socket carrying every subscription of a client
(docs/PROTOCOL.md §5.2–§5.6, §12)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Coroutine, Mapping

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.typing import Subprotocol

from .version import USER_AGENT
from .errors import TickstreamError
from .link import HANDSHAKE_S, Link, Plan, StateInfo, after_close, error_of, json_object
from .rest import error_from
from .tokens import bearer, expiry, refresh_delay, token_error

if TYPE_CHECKING:
    from .client import Client
    from .subscription import Subscription

# The server's inbound throttle is a burst of 20, then 10 messages a second per socket
# (docs/PROTOCOL.md §5.5; beyond it the socket closes with 4029). We stay under it.
SEND_BURST = 15
SEND_PER_S = 8.0
# websockets' own keepalive: a ping every 20 s, and a connection whose pong takes
# longer than 20 s is dead (the server drops a client silent for 60 s).
PING_S = 20.0
logger = logging.getLogger("tickstream")
# Replayed pages are single frames of at most a few hundred KiB (docs/PROTOCOL.md §5.5).
MAX_FRAME = 16 * 1024 * 1024


class WsLink(Link):
    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.ws: ClientConnection | None = None
        # Messages waiting for the send bucket; a subscription stands for its
        # subscribe, written when it leaves, so it asks from the newest cursor.
        self._out: deque[dict[str, Any] | Subscription] = deque()
        self._out_wake = asyncio.Event()
        self._retries: dict[Subscription, asyncio.TimerHandle] = {}  # a rate-limited subscribe, later
        self._limited: dict[Subscription, int] = {}  # rate-limited refusals in a row
        # A channel unsubscribed on this socket may still have frames of the old
        # subscription on the way, and no frame names the subscribe it answers. So an
        # unsubscribe is followed by a ping; until its pong (answered in order, after
        # what the server had queued) the channel's frames are dropped and a new
        # subscribe to it waits. Pings leave in the order they are queued (only a
        # refresh jumps ahead), so a ping's number is known when it is queued.
        self._draining: dict[str, int] = {}  # channel -> number of the ping ending it
        self._held: dict[str, Subscription] = {}  # channel -> subscription waiting for it
        self._pings = 0
        self._pongs = 0

    @property
    def open(self) -> bool:
        return self.ws is not None

    def add(self, sub: Subscription) -> None:
        if self.open:
            self._subscribe(sub)
        else:
            self.start()  # the connection to come subscribes it

    def remove(self, sub: Subscription) -> None:
        handle = self._retries.pop(sub, None)
        if handle is not None:
            handle.cancel()
        self._limited.pop(sub, None)
        if sub in self._out:  # never sent: nothing to undo
            self._out.remove(sub)
            return
        if self._held.get(sub.channel) is sub:
            del self._held[sub.channel]
            return
        if not self.open:
            return
        self._send({"type": "unsubscribe", "channel": sub.channel})
        self._send({"type": "ping"})
        self._pings += 1
        self._draining[sub.channel] = self._pings

    def _subscribe(self, sub: Subscription) -> None:
        sub.subscribing()
        if sub.channel in self._draining:
            self._held[sub.channel] = sub
        else:
            self._send(sub)

    def _send(self, item: dict[str, Any] | Subscription, first: bool = False) -> None:
        if first:  # a refresh must not wait behind a crowd of subscribes
            self._out.appendleft(item)
        else:
            self._out.append(item)
        self._out_wake.set()

    async def _writer(self, ws: ClientConnection) -> None:
        bucket, at = float(SEND_BURST), time.monotonic()
        while True:
            while not self._out:
                self._out_wake.clear()
                await self._out_wake.wait()
            now = time.monotonic()
            bucket, at = min(SEND_BURST, bucket + (now - at) * SEND_PER_S), now
            if bucket < 1:
                await asyncio.sleep((1 - bucket) / SEND_PER_S)
                continue
            item = self._out.popleft()
            bucket -= 1
            if isinstance(item, dict):
                message = item
            else:
                message = {"type": "subscribe", "channel": item.channel, **item.subscribe_params()}
            try:
                await ws.send(json.dumps(message, separators=(",", ":")))
            except ConnectionClosed:
                return  # the reader sees the close

    async def session(self) -> tuple[Plan, StateInfo] | None:
        c = self.client
        self._state("connecting")
        token = await self.token()
        # The token travels in the Authorization header (docs/PROTOCOL.md §3.1), which
        # carries any token; browsers must use the subprotocol, this client need not.
        headers = bearer(token)
        try:
            ws = await connect(
                c.ws_url + "/ws",
                subprotocols=[Subprotocol("tickstream.v1")],
                additional_headers=headers,
                open_timeout=HANDSHAKE_S,
                ping_interval=PING_S,
                ping_timeout=PING_S,
                close_timeout=2,
                max_size=MAX_FRAME,
                proxy=None,
                user_agent_header=USER_AGENT,
            )
        except InvalidStatus as e:
            r = e.response
            return self.refused(error_from(r.status_code, r.headers, bytes(r.body or b"")))
        except InvalidURI as e:
            return Plan(stop=TickstreamError("bad_url", str(e))), StateInfo()
        except ssl.SSLCertVerificationError as e:  # retrying cannot make the certificate valid
            return Plan(stop=TickstreamError("tls", f"the server's certificate is not trusted: {e}")), StateInfo()
        except (OSError, TimeoutError, WebSocketException) as e:
            return Plan(), StateInfo(error=TickstreamError("unreachable", f"cannot connect to {c.url}: {e!r}"))
        return await self._serve(ws, token)

    async def _serve(self, ws: ClientConnection, token: str) -> tuple[Plan, StateInfo] | None:
        c = self.client
        self.ws = ws
        self.opened()
        for sub in list(c.subscriptions.values()):
            if not sub.paused:
                self._subscribe(sub)
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._helper(ws, self._writer(ws))),
                   loop.create_task(self._helper(ws, self._refresher(token)))]
        try:
            async for message in ws:
                if isinstance(message, str):
                    self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self._drop()
            await ws.close()
        code, reason = ws.close_code or 1006, ws.close_reason or ""
        for sub in c.subscriptions.values():
            sub.subscribing()
        return after_close(code, c.tokens.refreshable, reason), StateInfo(code=code, reason=reason)

    async def _helper(self, ws: ClientConnection, work: Coroutine[Any, Any, None]) -> None:
        """Runs a helper of the open socket. Its failure would be a bug of this library:
        said, and the socket closed (the reconnect starts clean) rather than a socket
        whose messages silently stopped."""
        try:
            await work
        except Exception as e:
            logger.exception("tickstream: a connection task failed")
            self.client._report(TickstreamError("internal", f"a connection task failed: {e!r}"))
            await ws.close(1011, "client error")

    # Asks the token function for the next token before this one expires and sends it
    # as a `refresh`. A token that expires no later than the one in force is not sent:
    # the function is asked again later (halfway to the old expiry, at least in 5 s).
    async def _refresher(self, token: str) -> None:
        c = self.client
        if not c.tokens.refreshable:
            return
        delay = refresh_delay(token)
        while delay is not None:
            await asyncio.sleep(delay)
            try:
                fresh = await c.tokens.get(fresh=True)
            except Exception as e:
                c._report(token_error(e))
                delay = 5.0
                continue
            was, now = expiry(token), expiry(fresh)
            if was is not None and now is not None and now <= was:
                delay = max(5.0, (was - time.time()) / 2)
                continue
            self._send({"type": "refresh", "token": fresh}, first=True)
            token = fresh
            delay = refresh_delay(token)

    def _on_message(self, data: str) -> None:
        f = json_object(data)
        if f is None:
            return
        kind = f.get("type")
        if kind == "pong":
            self._on_pong()
            return
        channel = f.get("channel")
        channel = channel if isinstance(channel, str) else ""
        if channel in self._draining:
            return  # the unsubscribed one's
        sub = self.client.subscriptions.get(channel)
        if kind == "error":
            self._on_error(f, sub)
        elif sub is not None:
            if kind == "subscribed":
                self._limited.pop(sub, None)
            sub.frame(f)

    def _on_pong(self) -> None:
        self._pongs += 1
        for channel, n in list(self._draining.items()):
            if n > self._pongs:
                continue
            del self._draining[channel]
            sub = self._held.pop(channel, None)
            if sub is not None and self.client.subscriptions.get(channel) is sub:
                self._send(sub)

    def _on_error(self, f: Mapping[str, Any], sub: Subscription | None) -> None:
        c = self.client
        error = error_of(f, f.get("channel") or None)
        retry = f.get("retry_after")
        error.retry_after = float(retry) if isinstance(retry, (int, float)) else None
        if sub is None:  # a refused refresh: the server closes with 4001 later
            if not f.get("channel"):
                c._report(error)
            return
        if error.code == "rate_limited":  # transient: the same subscribe again, later
            sub.subscribing()
            n = self._limited.get(sub, 0) + 1
            self._limited[sub] = n
            delay = c.backoff.delay(n, error.retry_after or 1.0)
            self._retries[sub] = asyncio.get_running_loop().call_later(delay, self._retry_subscribe, sub)
            return
        c._refuse(sub, error)  # forbidden, bad_*: final

    def _retry_subscribe(self, sub: Subscription) -> None:
        self._retries.pop(sub, None)
        if self.open and not sub.paused and self.client.subscriptions.get(sub.channel) is sub:
            self._subscribe(sub)

    def _drop(self) -> None:
        self.ws = None
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        self._limited.clear()
        self._draining.clear()
        self._held.clear()
        self._pings = self._pongs = 0
        self._out.clear()  # subscriptions are asked again from their cursors on the next open

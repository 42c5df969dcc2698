"""Server-Sent Events, chosen explicitly (``transport="sse"``): one ``/sse/{channel}``
stream per subscription, read with httpx (docs/PROTOCOL.md §5.7)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

import httpx

from .errors import TickstreamError
from .link import HANDSHAKE_S, Link, Plan, StateInfo, after_close, error_of, json_object
from .rest import error_from
from .tokens import bearer

if TYPE_CHECKING:
    from .client import Client
    from .subscription import Subscription

# The `error` event that ends a stream, as the close code it stands for, so a user
# sees the same `code` whichever transport runs.
SSE_ENDS = {"restarting": 1012, "token_expired": 4001, "too_slow": 1013, "closed": 1000}
# A comment comes every 20 s: 60 s of nothing is a dead stream.
SILENCE_S = 60.0


class SseLink(Link):
    def __init__(self, client: Client, sub: Subscription) -> None:
        super().__init__(client)
        self.sub = sub
        self.channel = sub.channel
        self._resumed = asyncio.Event()

    def add(self, sub: Subscription) -> None:
        self.start()

    def resume(self) -> None:
        """The subscription's loop caught up: the stream that paused starts again."""
        self._resumed.set()

    async def session(self) -> tuple[Plan, StateInfo] | None:
        # A stream ended by a full buffer starts again, from the last tick received,
        # once the loop has caught up: no backoff, no reconnect.
        while True:
            self._resumed.clear()
            ended = await self._stream()
            if ended != "paused":
                return ended
            await self._resumed.wait()

    async def _stream(self) -> tuple[Plan, StateInfo] | Literal["paused"] | None:
        c, sub = self.client, self.sub
        self._state("connecting")
        token = await self.token()
        params = {k: str(v) for k, v in sub.subscribe_params().items()}
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **bearer(token)}
        sub.subscribing()
        http = c.sse_http
        # The read timeout is the silence that makes a stream dead (comments come every
        # 20 s); the answer's headers have the handshake's time, as over WebSocket.
        request = http.build_request("GET", f"{c.url}/sse/{quote(sub.channel, safe='')}", params=params,
                                     headers=headers, timeout=httpx.Timeout(HANDSHAKE_S, read=SILENCE_S))
        try:
            async with asyncio.timeout(HANDSHAKE_S):
                response = await http.send(request, stream=True)
        except (httpx.HTTPError, TimeoutError) as e:
            return Plan(), StateInfo(error=TickstreamError("unreachable", f"no answer from {c.url}: {e!r}"))
        try:
            if response.status_code != 200:
                error = error_from(response.status_code, response.headers, await response.aread())
                if error.code == "forbidden" or error.status == 400:
                    c._refuse(sub, error)  # this subscription alone, for good
                    return None
                return self.refused(error)
            self.opened()
            ended = await self._read(response)
        except httpx.HTTPError as e:
            ended = Plan(), StateInfo(error=TickstreamError("unreachable", f"the stream from {c.url} failed: {e!r}"))
        finally:
            await response.aclose()
        sub.subscribing()
        return ended

    # Reads events until the stream ends; returns how it ended.
    async def _read(self, response: httpx.Response) -> tuple[Plan, StateInfo] | Literal["paused"] | None:
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
                continue
            if line or not data:
                continue  # another field (event:, id:), a comment, or a blank line alone
            f, data = json_object("\n".join(data)), []
            if f is None:
                continue
            if f.get("type") != "error":
                self.sub.frame(f)
                if self.sub.paused:  # the loop is behind: this stream ends until it catches up
                    return "paused"
                continue
            # The stream's end, said before it ends (docs/PROTOCOL.md §5.7).
            reason = str(f.get("code"))
            code = SSE_ENDS.get(reason)
            if code is None:  # a refusal of this subscription: final
                self.client._refuse(self.sub, error_of(f, self.sub.channel))
                return None
            return after_close(code, self.client.tokens.refreshable, reason), StateInfo(code=code, reason=reason)
        return Plan(), StateInfo()

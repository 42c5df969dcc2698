"""Server-Sent Events, chosen explicitly (``transport="sse"``): one ``/sse/{channel}``
stream per subscription, read with httpx (docs/PROTOCOL.md §5.7)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

from .errors import TickstreamError
from .link import HANDSHAKE_S, Link, Paused, Plan, StateInfo, after_close, after_refusal
from .rest import error_from
from .tokens import bearer

if TYPE_CHECKING:
    from .client import Client, ClientState
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

    def add(self, sub: Subscription) -> None:
        self.start()

    def _state(self, state: ClientState, info: StateInfo) -> None:
        self.client._set_state(state, StateInfo(url=info.url, error=info.error, channel=self.sub.channel))

    def _next(self, plan: Plan, info: StateInfo) -> float | None:
        return super()._next(plan, StateInfo(code=info.code, reason=info.reason, error=info.error, channel=self.sub.channel))

    # This subscription is refused for good (403, a bad parameter): it ends alone.
    def _refused(self, error: TickstreamError) -> None:
        self.client._dropped(self.sub)
        self.sub._end(error)

    async def session(self) -> tuple[Plan, StateInfo] | Paused | None:
        c, sub = self.client, self.sub
        self._state("connecting", StateInfo(url=c.url))
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
                    self._refused(error)
                    return None
                return after_refusal(error, c.tokens.refreshable), StateInfo(error=error)
            self.opened()
            self._state("connected", StateInfo(url=c.url))
            ended = await self._read(response)
        except httpx.HTTPError as e:
            ended = Plan(), StateInfo(error=TickstreamError("unreachable", f"the stream from {c.url} failed: {e!r}"))
        finally:
            await response.aclose()
        if ended is not None and not sub.closed:
            sub.subscribing()
        return ended

    # Reads events until the stream ends; returns how it ended.
    async def _read(self, response: httpx.Response) -> tuple[Plan, StateInfo] | Paused | None:
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
                continue
            if line or not data:
                continue  # another field (event:, id:), a comment, or a blank line alone
            text, data = "\n".join(data), []
            try:
                f = json.loads(text)
            except ValueError:
                continue
            if not isinstance(f, dict):
                continue
            if f.get("type") != "error":
                self.sub.frame(f)
                if self.sub.paused:  # the loop is behind: this stream ends until it catches up
                    return "paused"
                continue
            # The stream's end, said before it ends (docs/PROTOCOL.md §5.7).
            code = SSE_ENDS.get(str(f.get("code")))
            if code is None:  # a refusal of this subscription: final
                self._refused(TickstreamError(str(f.get("code") or "error"), str(f.get("message") or ""), channel=self.sub.channel))
                return None
            reason = str(f.get("code"))
            return after_close(code, self.client.tokens.refreshable, reason), StateInfo(code=code, reason=reason)
        return Plan(), StateInfo()

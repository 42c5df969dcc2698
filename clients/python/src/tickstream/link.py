"""What both transports share: what a close code or a refusal means (docs/PROTOCOL.md
§5.6, §12), backoff with full jitter, and the reconnect loop."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from .errors import TickstreamError
from .tokens import token_error

if TYPE_CHECKING:
    from .client import Client, ClientState

__all__ = ["Backoff", "StateInfo"]

logger = logging.getLogger("tickstream")

# A connection that stayed up this long starts the backoff over.
STABLE_S = 10.0
# A WebSocket handshake (or an SSE request's headers) that takes longer is given up.
HANDSHAKE_S = 15.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: the n-th wait in a row is uniform in
    [minimum, minimum + min(cap, base·2ⁿ)] seconds."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, minimum: float = 0.0) -> float:
        return minimum + random.uniform(0.0, min(self.cap, self.base * 2 ** min(attempt, 30)))


@dataclass(frozen=True, slots=True)
class StateInfo:
    """What comes with a state change: the node (``url``), and for ``reconnecting``
    the close ``code`` and ``reason`` or the ``error``, the ``delay`` before the next
    attempt (seconds) and the ``attempt`` count; ``channel`` for an SSE stream."""

    url: str | None = None
    code: int | None = None
    reason: str | None = None
    error: TickstreamError | None = None
    delay: float | None = None
    attempt: int | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do after a connection ended."""

    stop: TickstreamError | None = None  # give up and report this
    token: bool = False  # ask the token function for a new token first
    backoff: bool = False  # (with token) back off even the first time
    minimum: float = 0.0  # wait at least this long (seconds)
    extra: int = 0  # count as this many more attempts (a steeper backoff)
    soon: bool = False  # come back in 0.1–1 s


def after_close(code: int, refreshable: bool, reason: str = "") -> Plan:
    """What a close code asks of a client (docs/PROTOCOL.md §5.6); ``refreshable``:
    the client has a token function (else a 4001 is the end)."""
    if code in (1002, 1007, 1008):
        said = f": {reason}" if reason else ""
        return Plan(stop=TickstreamError("policy", f"the server closed the socket ({code}){said}"))
    if code == 4003:
        return Plan(stop=TickstreamError("forbidden", "the server refused this client (4003)", status=403))
    if code == 4001:
        if not refreshable:
            return Plan(stop=TickstreamError("token_expired", "the token expired and no token function was given"))
        return Plan(token=True)
    if code == 4029:
        return Plan(minimum=5.0, extra=2)
    if code == 1013:
        return Plan(minimum=5.0)
    if code == 1012:
        return Plan(soon=True)
    return Plan()


def after_refusal(error: TickstreamError, refreshable: bool) -> Plan:
    """What an HTTP refusal of a handshake (or an SSE request) asks of a client."""
    if error.status == 401:
        return Plan(token=True, backoff=True) if refreshable else Plan(stop=error)
    if error.status in (400, 403, 404):
        return Plan(stop=error)
    if error.status == 429:
        return Plan(minimum=error.retry_after or 5.0)
    if error.status == 503:
        return Plan(minimum=1.0)
    return Plan()


def json_object(text: str) -> dict[str, Any] | None:
    """A frame's JSON object, or None for anything else (a newer server's text)."""
    try:
        f = json.loads(text)
    except ValueError:
        return None
    return f if isinstance(f, dict) else None


def error_of(f: Mapping[str, Any], channel: str | None) -> TickstreamError:
    """The error an `error` frame (or SSE event) says."""
    return TickstreamError(str(f.get("code") or "error"), str(f.get("message") or f.get("code") or "error"),
                           channel=channel)


class NoToken(Exception):
    """The token function failed before a connection: reported, then tried again."""

    def __init__(self, error: TickstreamError) -> None:
        super().__init__(error.message)
        self.error = error


class Link:
    """A connection kept up by one task: connect, serve, and after every end wait as
    the plan says, until the client closes or the plan says stop."""

    #: The subscription's channel for a link that carries one (SSE), told in its states.
    channel: str | None = None

    def __init__(self, client: Client) -> None:
        self.client = client
        self.attempt = 0
        self._fresh_token = False
        # The last attempt's token came fresh from the token function: a 401 for it
        # means the function's tokens are refused, not that one expired.
        self._token_was_fresh = False
        self._skip = asyncio.Event()
        self._opened_at: float | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"tickstream {type(self).__name__}")

    async def session(self) -> tuple[Plan, StateInfo] | None:
        """One connection, from the token to its end; None: this link stops quietly."""
        raise NotImplementedError

    async def _run(self) -> None:
        try:
            while not self.client.closed:
                try:
                    ended = await self.session()
                except NoToken as e:
                    ended = Plan(token=True, backoff=True), StateInfo(error=e.error)
                if ended is None or self.client.closed:
                    return
                delay = self._next(*ended)
                if delay is None:
                    return
                await self._wait(delay)
        except Exception as e:  # a bug of this library: said, rather than a silent hang
            logger.exception("tickstream: the connection task failed")
            self.client._fail(TickstreamError("internal", f"the connection task failed: {e!r}"))

    def _state(self, state: ClientState) -> None:
        """A state of this link's connection, with its node (and channel)."""
        c = self.client
        c._set_state(state, StateInfo(url=c.url, channel=self.channel))

    def opened(self) -> None:
        """A connection is up (the backoff starts over once it stays up 10 s)."""
        self._opened_at = time.monotonic()
        self._state("connected")

    def refused(self, error: TickstreamError) -> tuple[Plan, StateInfo]:
        """How a refused handshake (or SSE request) ends a session. A 401 for a token
        fresh from the function stops: its tokens are refused, they did not expire."""
        refreshable = self.client.tokens.refreshable and not self._token_was_fresh
        return after_refusal(error, refreshable), StateInfo(error=error)

    def _next(self, plan: Plan, info: StateInfo) -> float | None:
        """The wait before the next attempt, or None when it must stop."""
        if self._opened_at is not None and time.monotonic() - self._opened_at >= STABLE_S:
            self.attempt = 0
        self._opened_at = None
        c = self.client
        if plan.stop is not None:
            c._fail(plan.stop)
            return None
        if plan.soon:
            delay = random.uniform(0.1, 1.0)
        elif plan.token and not plan.backoff and self.attempt == 0:
            delay = 0.0
        else:
            delay = c.backoff.delay(self.attempt, plan.minimum)
        self.attempt += 1 + plan.extra
        if plan.token:
            self._fresh_token = True
        c._set_state(
            "reconnecting",
            StateInfo(
                url=c.url, code=info.code, reason=info.reason, error=info.error,
                delay=round(delay, 3), attempt=self.attempt, channel=self.channel,
            ),
        )
        return delay

    async def _wait(self, delay: float) -> None:
        self._skip.clear()  # a skip asked for outside a wait is forgotten here
        try:
            await asyncio.wait_for(self._skip.wait(), delay)
        except TimeoutError:
            pass

    def skip_wait(self) -> None:
        """Ends a backoff wait now; nothing while connected or connecting."""
        self._skip.set()

    async def token(self) -> str:
        """The token for the next attempt, fresh when the server said it expired; a
        failing token function is reported and raises ``NoToken``."""
        fresh, self._fresh_token = self._fresh_token, False
        self._token_was_fresh = False
        try:
            token = await self.client.tokens.get(fresh)
        except Exception as e:
            error = token_error(e)
            self.client._report(error)
            raise NoToken(error) from e
        # Only a token asked for *again* counts: a refused first token is worth one
        # more call (it may have been minted just before its key rotated).
        self._token_was_fresh = fresh
        return token

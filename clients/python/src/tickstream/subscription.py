"""One channel's subscription: its cursor, the continuity check, and the buffer its
``async for`` reads (docs/PROTOCOL.md §12)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Literal, Mapping, Self, TypeAlias

from .errors import TickstreamError
from .events import Candle, Cursor, Event, Gap, GapReason, Tick, compare_ids, is_id

if TYPE_CHECKING:
    from types import TracebackType

    from .client import Client

__all__ = ["State", "Subscription"]

State: TypeAlias = Literal["pending", "replaying", "live", "closed"]


class Subscription:
    """Every tick after the cursor exactly once, in order, or a ``Gap`` saying what was
    lost. Use it as ``async with client.subscribe(...) as sub: async for event in sub``;
    leaving the ``async with`` or the ``async for`` unsubscribes (``sub.cursor`` stays).

    Events wait in a buffer for the loop. When ``max_buffer`` of them wait, the
    subscription is paused (unsubscribed on the server, which keeps what follows) until
    the loop has taken half of them, then resumed from the last tick received: a slow
    loop bounds the client's memory and costs the server nothing (docs/PROTOCOL.md §5.5).
    """

    def __init__(
        self, client: Client, channel: str, options: Mapping[str, Any], start: Cursor | None, max_buffer: int
    ) -> None:
        self._client = client
        #: The channel subscribed to.
        self.channel = channel
        self._options = dict(options)
        #: The last tick handed over (returned by the iterator): what a service keeps
        #: to resume after its own restart. Before the first tick, the given start.
        self.cursor: Cursor | None = start
        #: ``pending`` (asked for) · ``replaying`` · ``live`` · ``closed``.
        self.state: State = "pending"
        #: Why it ended, when it ended with an error.
        self.error: TickstreamError | None = None
        #: Ticks received since the last (re)subscribe, while replaying.
        self.replayed = 0
        # The last tick received and accepted (it may still wait in the buffer):
        # repeats and continuity are judged against it, and a resume starts after it.
        self._last: Cursor | None = start
        # Set when a (re)subscribe was sent: frames before its `subscribed` belong to
        # an earlier incarnation and are ignored.
        self._awaiting = True
        # The next tick may start a new run (after `subscribed` or a gap): no check.
        self._fresh = True
        self._epoch: str | None = None
        # The last gap handed over while no tick has followed it (the next tick is
        # expected to jump): a resume before its tick makes the server say it again,
        # and `missed` must not count twice.
        self._last_gap: Gap | None = None
        # Events for the loop, each tick with its cursor (built once, when received).
        self._buffer: deque[tuple[Event, Cursor | None]] = deque()
        self._max_buffer = max_buffer
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._reading = False
        # Set by the first read: the buffer pauses only once a loop reads it (a
        # `wait_live()` before the loop must see the replay end, however long).
        self._read_once = False
        self._unreported = False
        self._live = asyncio.Event()
        self._closed = asyncio.Event()

    # ---- the user's side -------------------------------------------------------------------

    @property
    def rate(self) -> int | None:
        return self._options.get("rate")

    @property
    def candles(self) -> str | None:
        return self._options.get("candles")

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def buffered(self) -> int:
        """Events received and waiting for the loop."""
        return len(self._buffer)

    @property
    def paused(self) -> bool:
        """True while the buffer is full and the server sends nothing for it."""
        return self._paused

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return Loop(self)

    async def __anext__(self) -> Event:
        """The next event (``await anext(sub)``): a read cancelled while it waits, by a
        timeout say, loses nothing and leaves the subscription open."""
        if self._reading:
            raise RuntimeError("another task is already iterating this subscription")
        self._reading = True
        self._read_once = True
        try:
            while not self._buffer:
                if self.state == "closed":
                    if self._unreported and self.error is not None:
                        self._unreported = False
                        raise self.error
                    raise StopAsyncIteration
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            event, cursor = self._buffer.popleft()
            if cursor is not None:  # a tick: handed over
                self.cursor = cursor
            if self._paused and len(self._buffer) <= self._max_buffer // 2 and self.state != "closed":
                self._paused = False
                self._client._resume(self)
            return event
        finally:
            self._reading = False

    async def wait_live(self) -> None:
        """Returns once the replay is over (the server's ``live`` frame), or raises the
        error the subscription ended with."""
        await self._live.wait()  # (set by the end too)
        if self.state == "closed":
            if self.error is not None:
                self._unreported = False  # told here: the loop does not raise it again
                raise self.error
            raise TickstreamError("closed", f"the subscription to {self.channel} ended")

    async def wait_closed(self) -> TickstreamError | None:
        """Waits until it ends; returns the error it ended with, or None."""
        await self._closed.wait()
        return self.error

    def close(self) -> None:
        """Unsubscribes; an iterator finishes. ``cursor`` stays as it is."""
        if self.state == "closed":
            return
        self._client._unsubscribed(self)
        self._end(None)

    # ---- the transport's side ------------------------------------------------------------------

    def subscribe_params(self) -> dict[str, Any]:
        """What to ask for now: from the last tick received once there is one, else as
        asked (``since``, ``seq``, ``epoch``), with ``rate`` and ``candles``."""
        o, c = self._options, self._last
        params: dict[str, Any] = {}
        if c is not None:
            params["since"] = c.id
            if c.seq is not None:
                params["seq"] = c.seq
            if c.epoch is not None:
                params["epoch"] = c.epoch
        else:
            for key in ("since", "seq", "epoch"):
                if o.get(key) is not None:
                    params[key] = o[key]
        for key in ("rate", "candles"):
            if o.get(key) is not None:
                params[key] = o[key]
        return params

    def subscribing(self) -> None:
        """Called as the transport (re)subscribes: wait for its ``subscribed``."""
        if self.state == "closed":
            return
        self._awaiting = True
        self.state = "pending"
        self._live.clear()

    def frame(self, f: Mapping[str, Any]) -> None:
        """One server frame for this channel."""
        if self.state == "closed":
            return
        kind = f.get("type")
        if kind == "subscribed":
            self._awaiting = False
            # A gap handed over before a drop stays pending: its tick is still to come.
            self._fresh = True
            epoch = f.get("epoch")
            self._epoch = epoch if isinstance(epoch, str) else None
            self.replayed = 0
            self.state = "replaying"
            return
        if self._awaiting:
            return
        if kind == "tick":
            self._tick(f)
        elif kind == "gap":
            self._gap(Gap.parse(f, self.channel))
        elif kind == "candle":
            self._push(Candle.parse(f, self.channel), None)
        elif kind == "live":
            last_id = f.get("last_id")
            # With nothing received yet (since=$, an empty channel), the cursor becomes
            # where the server says the stream stood, so a resume starts there.
            if self._last is None and is_id(last_id):
                self._last = self.cursor = Tick.cursor_of(last_id, None, self._epoch)
            self.state = "live"
            self._live.set()

    def _gap(self, gap: Gap) -> None:
        # Said again after a resume that came before its tick: the same loss, perhaps
        # grown (trimming went on meanwhile). Only what it adds is handed over.
        before = self._last_gap
        self._last_gap = gap
        if before is not None and before.reason == gap.reason and before.after == gap.after:
            if before.resume_from == gap.resume_from:
                return
            more = gap.missed - before.missed if gap.missed is not None and before.missed is not None else None
            gap = Gap(gap.channel, gap.reason, before.resume_from or gap.after, gap.resume_from, more)
        self._push(gap, None)

    # Exactly once, in order: a tick at or before the last one received (same epoch) is
    # a repeat, dropped. Within an epoch the next tick's seq must be the previous +
    # skipped + 1, and the epoch must not change, unless a gap frame said so; a break
    # the server did not announce becomes a Gap of our own (detected="client").
    def _tick(self, f: Mapping[str, Any]) -> None:
        if not is_id(f.get("id")):
            return
        tick = Tick.parse(f, self.channel)
        last = self._last
        if last is not None and (last.epoch is None or tick.epoch == last.epoch) and compare_ids(tick.id, last.id) <= 0:
            return
        if last is not None and self._last_gap is None:
            reason: GapReason | None = None
            missed = None
            if last.epoch is not None and tick.epoch != last.epoch:
                reason = "epoch"
            elif tick.skipped is None and not self._fresh:  # uncountable, where it may not be
                reason = "seq"
            elif last.seq is not None and tick.seq is not None and tick.skipped is not None:
                expected = last.seq + tick.skipped + 1
                if tick.seq != expected:
                    reason, missed = "seq", (tick.seq - expected if tick.seq > expected else None)
            if reason is not None:
                self._push(Gap(self.channel, reason, last.id, tick.id, missed, "client"), None)
        self._fresh = False
        self._last_gap = None
        if self.state == "replaying":
            self.replayed += 1
        self._last = cursor = tick.cursor
        self._push(tick, cursor)

    def _push(self, event: Event, cursor: Cursor | None) -> None:
        self._buffer.append((event, cursor))
        self._wake()
        if not self._paused and self._read_once and len(self._buffer) >= self._max_buffer:
            self._paused = True
            self._client._pause(self)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _end(self, error: TickstreamError | None) -> None:
        """Ends it; an error is raised once by the iterator, after what was received
        before it (and stays in ``error``). Closed without one, what waits is dropped."""
        if self.state == "closed":
            return
        self.state = "closed"
        self.error = error
        self._paused = False
        self._live.set()  # a wait_live() ends: it raises
        if error is None:
            self._buffer.clear()
        else:
            self._unreported = True
        self._closed.set()
        self._wake()

    def __repr__(self) -> str:
        return f"<Subscription {self.channel} {self.state} cursor={self.cursor}>"


class Loop:
    """What ``async for event in sub`` iterates. Leaving the loop (``break``, ``return``,
    an exception, the task cancelled) drops it, and dropping it closes the subscription
    at once, as leaving the ``async with`` would: the channel is free again on the next
    line. A loop refused as a second reader closes nothing."""

    __slots__ = ("_sub", "_reader")

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub
        self._reader = False

    def __aiter__(self) -> Loop:
        return self

    async def __anext__(self) -> Event:
        if self._sub._reading:
            raise RuntimeError("another task is already iterating this subscription")
        self._reader = True
        return await self._sub.__anext__()

    def __del__(self) -> None:
        if self._reader:
            try:
                self._sub.close()
            except RuntimeError:  # dropped after its event loop closed: nothing to tell
                pass

"""Fixtures: clients that record their states and are closed after each test, event
collectors, and the checks every test ends with — no task left running and no error
left where nothing listens (the library's cancellation-safety, asserted everywhere)."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tickstream import Backoff, Candle, Client, Gap, StateInfo, Subscription, Tick, TickstreamError

from .support import Redis, Server, jwt


@dataclass
class Collected:
    """What a subscription's ``async for`` handed over, gathered by a task of its own."""

    ticks: list[Tick] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    candles: list[Candle] = field(default_factory=list)
    #: The error its subscription ended with: none is expected (make_client checks).
    error: TickstreamError | None = None
    task: asyncio.Task[None] | None = None


# The collectors: their tasks end when their subscriptions do, and make_client's
# teardown waits for that after closing its clients.
collected: list[Collected] = []


def collect(sub: Subscription) -> Collected:
    got = Collected()

    async def read() -> None:
        try:
            async for event in sub:
                {"tick": got.ticks, "gap": got.gaps, "candle": got.candles}[event.type].append(event)
        except TickstreamError as e:
            got.error = e

    got.task = asyncio.get_running_loop().create_task(read())
    collected.append(got)
    return got


class Recorded(Client):
    """A Client that keeps the state changes it went through in ``calls``."""

    calls: list[tuple[str, StateInfo]]

    def states(self, state: str) -> list[StateInfo]:
        return [info for s, info in self.calls if s == state]


@pytest.fixture(scope="module")
def redis(request: pytest.FixtureRequest) -> Iterator[Redis]:
    """The test module's redis-server. A module sets ``REDIS_PERSIST = True`` for an
    append-only file (a restart then loses nothing) and ``REDIS_ARGS`` for more."""
    r = Redis(persist=getattr(request.module, "REDIS_PERSIST", False), extra=getattr(request.module, "REDIS_ARGS", ()))
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(redis: Redis, request: pytest.FixtureRequest) -> Iterator[Server]:
    """The test module's tickstream binary on its Redis, with the module's ``SERVER_ENV``."""
    s = Server(redis, getattr(request.module, "SERVER_ENV", {}))
    yield s
    s.close()


@pytest.fixture(scope="module")
def strict(redis: Redis, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A second node on the same Redis with the module's ``STRICT_ENV``: small buckets,
    where a test needs the server to refuse."""
    s = Server(redis, request.module.STRICT_ENV)
    yield s
    s.close()


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., Recorded]]:
    """A factory of clients with a valid token and quick backoff; each is closed after
    the test, also when an assertion failed."""
    made: list[Recorded] = []

    def make(url: Any, **options: Any) -> Recorded:
        calls: list[tuple[str, StateInfo]] = []
        options.setdefault("token", jwt())
        options.setdefault("backoff", Backoff(base=0.1, cap=1.0))
        c = Recorded(url, on_state=lambda s, info: calls.append((s, info)), **options)
        c.calls = calls
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()
    if collected:
        _, pending = await asyncio.wait([got.task for got in collected if got.task], timeout=5)
        errors = [got.error for got in collected if got.error]
        collected.clear()
        assert not pending, "a subscription's loop went on after its client closed"
        assert not errors, f"collected subscriptions ended with errors: {errors}"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every message the library sends on a socket, so a test can count what it asked."""
    messages: list[dict[str, Any]] = []
    send = ClientConnection.send

    async def spy(self: ClientConnection, message: Any, *args: Any, **kwargs: Any) -> None:
        messages.append(json.loads(message))
        await send(self, message, *args, **kwargs)

    monkeypatch.setattr(ClientConnection, "send", spy)
    return messages


@pytest.fixture(autouse=True)
async def no_loose_ends() -> AsyncIterator[None]:
    """Every test ends with no task of the library still running and no exception
    that nobody retrieved."""
    loop = asyncio.get_running_loop()
    loose: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loose.append(context))
    yield
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    if others:  # what close() cancelled finishes within a few turns of the loop
        await asyncio.wait(others, timeout=0.25)
    left = [t for t in others if not t.done()]
    for t in left:
        t.cancel()
    assert not left, f"tasks left running: {left}"
    gc.collect()  # a task that failed unseen is reported as it is collected
    assert not loose, f"errors nobody retrieved: {loose}"

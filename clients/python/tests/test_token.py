"""Tokens that expire while the user streams: a token function is called again before
``exp``, the socket outlives every token, and a 4001 (the function failed to deliver in
time) becomes a new token and a resumed subscription."""

from __future__ import annotations

import time

from tickstream import TickstreamError

from .conftest import collect
from .support import Producer, assert_exactly_once, jwt, until


def short_lived() -> str:
    """A token the server accepts for about 6 s more: past ``exp``, inside its 30 s
    leeway (long enough for a loaded machine's stalls, short beside the test)."""
    now = int(time.time())
    return jwt(iat=now - 60, exp=now - 24)


async def test_a_token_function_keeps_the_socket_open_past_every_expiry(make_client, redis, server) -> None:
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        return short_lived()

    c = make_client(server.url, token=token)
    channel = "token.refreshed"
    got = collect(c.subscribe(channel, since="0-0"))
    producer = Producer(lambda: server, channel, every=0.05)
    started = time.monotonic()
    await until("ticks flow", lambda: len(got.ticks) >= 5)
    # Each token alone would have been closed with 4001 after ~6 s: outlive two.
    await until("13 s of refreshed tokens", lambda: time.monotonic() - started > 13 and calls >= 10, 25)
    ids = await producer.stop()
    await until("every tick", lambda: got.ticks[-1].id == ids[-1])
    assert len(c.states("connected")) == 1, "one connection all along"
    assert_exactly_once(got.ticks, await redis.stream(channel))


async def test_4001_after_the_token_function_failed_means_a_new_token_and_a_resume(make_client, redis, server) -> None:
    calls = 0

    def token() -> str:  # a plain function works as well as a coroutine function
        nonlocal calls
        calls += 1
        if calls == 1:
            return short_lived()
        if not c.states("reconnecting"):  # every refresh before exp fails
            raise RuntimeError("the token service is down")
        return jwt()

    errors: list[TickstreamError] = []
    c = make_client(server.url, token=token, on_error=errors.append)
    channel = "token.expired"
    got = collect(c.subscribe(channel, since="0-0"))
    producer = Producer(lambda: server, channel, every=0.05)
    await until("closed with 4001 and back",
                lambda: any(i.code == 4001 for i in c.states("reconnecting")) and c.state == "connected", 20)
    at = len(got.ticks)
    await until("ticks after the new token", lambda: len(got.ticks) >= at + 5)
    ids = await producer.stop()
    await until("every tick", lambda: got.ticks[-1].id == ids[-1])
    assert errors and {e.code for e in errors} == {"token_error"}, "each failed refresh was reported"
    # The first token, the failed refreshes, the one after the 4001 (and perhaps a
    # refresh that was under way when the 4001 came).
    assert len(errors) + 2 <= calls <= len(errors) + 3
    assert_exactly_once(got.ticks, await redis.stream(channel))
    assert got.gaps == []


async def test_tokens_refused_even_when_fresh_stop_the_client(make_client, server) -> None:
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        return jwt(secret="not-the-server-secret-0123456789abcdef")

    c = make_client(server.url, token=token)
    sub = c.subscribe("token.refused")
    error = await sub.wait_closed()
    assert error is not None and (error.status, error.code) == (401, "invalid_token")
    assert calls == 2, "the first token, then one fresh one: both refused, so it stops"
    assert c.state == "closed"

"""SSE, chosen explicitly: the same guarantee over one ``/sse/{channel}`` stream per
subscription, across a graceful restart and a SIGKILL; a rate; a refusal that ends
its subscription alone."""

from __future__ import annotations

import asyncio

import pytest

from tickstream import TickstreamError

from .conftest import collect
from .support import Producer, assert_exactly_once, jwt, until

REDIS_PERSIST = True
SERVER_ENV = {"TICKSTREAM_RATE_FREE_WS": "100000/s:100000"}


async def test_over_sse_exactly_once_across_a_graceful_restart_and_a_kill(make_client, redis, server) -> None:
    channel = "sse.resume"
    c = make_client(server.url, transport="sse")
    got = collect(c.subscribe(channel, since="0-0"))
    producer = Producer(lambda: server, channel)
    await until("ticks flow", lambda: len(got.ticks) >= 10)
    assert await server.terminate() == 0
    await server.start_again()
    n = len(got.ticks)
    await until("ticks after the restart", lambda: len(got.ticks) >= n + 10, 30)
    await server.kill9()
    await server.start_again()
    n = len(got.ticks)
    await until("ticks after the kill", lambda: len(got.ticks) >= n + 10, 30)
    ids = await producer.stop()
    await until("every tick", lambda: got.ticks[-1].id == ids[-1])
    assert_exactly_once(got.ticks, await redis.stream(channel))
    assert got.gaps == []
    assert c.states("reconnecting")[0].code == 1012, "the restarting event stands for 1012"
    assert c.states("reconnecting")[0].channel == channel


async def test_over_sse_a_rate_and_a_forbidden_channel_that_ends_alone(make_client, server) -> None:
    c = make_client(server.url, transport="sse", token=jwt(channels=["sse.open.*"]))
    sub = c.subscribe("sse.open.rated", since="$", rate=2)
    got = collect(sub)
    await sub.wait_live()
    denied = c.subscribe("sse.secret")
    with pytest.raises(TickstreamError) as raised:
        async for _ in denied:
            pass
    assert (raised.value.status, raised.value.code) == (403, "forbidden")
    producer = Producer(lambda: server, "sse.open.rated", every=0.01)
    await until("conflated ticks", lambda: len(got.ticks) >= 4)
    await producer.stop()
    assert all(b.seq == a.seq + b.skipped + 1 for a, b in zip(got.ticks, got.ticks[1:])), "the skipped chain holds"
    assert sum(t.skipped for t in got.ticks) > 0
    assert sub.state == "live", "the other subscription goes on"


async def test_many_sse_streams_never_starve_rest(make_client, server) -> None:
    c = make_client(server.url, transport="sse")
    subs = [c.subscribe(f"sse.many.{i}", since="$") for i in range(110)]
    await until("all 110 streams live", lambda: all(s.state == "live" for s in subs), 30)
    await server.ingest("sse.many.7", [{"value": 7}])
    tick = await asyncio.wait_for(c.latest("sse.many.7"), 5)
    assert tick is not None and tick.value == 7, "REST answers beside 110 open streams"
